"""The tiling manifest (one CSV row per slide), merging an array job's shard manifests, and finding stores from
paths, folders, globs or manifests."""

import csv
import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pathgen.errors import StoreError

STORE_SUFFIXES = (".zarr", ".h5")
_SHARD_MANIFEST = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.csv")


@dataclass
class ManifestRow:
    slide: str  # absolute path
    status: str  # ok | failed | skipped
    n_patches: int = 0
    seconds: float = 0.0
    error: str = ""
    store: str = ""  # relative to the manifest's folder
    extra: dict = field(default_factory=dict)  # the slide list's other columns (label, case id, ...), in order


COLUMNS = [f.name for f in fields(ManifestRow) if f.name != "extra"]


def manifest_name(shard: tuple[int, int]) -> str:
    """manifest.csv, or manifest.shard-I-of-N.csv so parallel array jobs never write the same file."""
    index, count = shard
    return "manifest.csv" if count == 1 else f"manifest.shard-{index}-of-{count}.csv"


def summary_path(manifest: Path) -> Path:
    """summary.txt beside manifest.csv (summary.shard-I-of-N.txt beside manifest.shard-I-of-N.csv)."""
    return manifest.with_name(manifest.name.replace("manifest", "summary", 1).removesuffix(".csv") + ".txt")


def write_manifest(path: Path, rows: Sequence[ManifestRow]) -> Path:
    """Write atomically, so a reader never sees half a manifest. Extra columns follow the standard ones."""
    from pathgen.store.writer import temp_path

    extra = list(dict.fromkeys(k for row in rows for k in row.extra if k not in COLUMNS))
    tmp = temp_path(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + extra)
        writer.writeheader()
        for row in rows:
            cells = {k: v for k, v in asdict(row).items() if k != "extra"}
            writer.writerow(row.extra | cells | {"seconds": f"{row.seconds:.2f}"})
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"slide", "status", "store"} <= set(reader.fieldnames):
                raise StoreError(path, "not a tiling manifest (needs columns slide, status, store)")
            extra = [c for c in reader.fieldnames if c not in COLUMNS]
            return [
                ManifestRow(
                    slide=r["slide"],
                    status=r["status"],
                    n_patches=int(r.get("n_patches") or 0),
                    seconds=float(r.get("seconds") or 0),
                    error=r.get("error") or "",
                    store=r["store"],
                    extra={c: r.get(c) or "" for c in extra},
                )
                for r in reader
            ]
    except OSError as err:
        raise StoreError(path, f"cannot read manifest ({err.strerror})") from None


def summarize(rows: Sequence[ManifestRow], seconds: float, time_note: str = "") -> str:
    """A few human-readable lines: counts, patches, time, and each failure's reason."""
    count = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
    patches = sum(r.n_patches for r in rows if r.status != "failed")
    lines = [
        f"slides: {len(rows)}  ok: {count['ok']}  skipped: {count['skipped']}  failed: {count['failed']}",
        f"patches: {patches}  time: {seconds:.1f} s" + (f" ({time_note})" if time_note else ""),
    ]
    empty = [r.slide for r in rows if r.status == "ok" and r.n_patches == 0]
    if empty:
        lines.append(f"warning: no tissue patches in {len(empty)} slide(s): " + ", ".join(empty))
    lines += [f"failed: {r.slide}: {r.error}" for r in rows if r.status == "failed"]
    return "\n".join(lines) + "\n"


def merge_manifests(out_dir: str | Path) -> Path:
    """Combine the shard manifests of an array job (manifest.shard-I-of-N.csv in `out_dir`) into manifest.csv, with
    its summary.txt; StoreError if a shard's manifest is missing or the shards come from different runs."""
    out_dir = Path(out_dir)
    shards: dict[int, dict[int, Path]] = {}
    for p in sorted(out_dir.glob("manifest.shard-*-of-*.csv")):
        if m := _SHARD_MANIFEST.fullmatch(p.name):
            shards.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not shards:
        raise StoreError(out_dir, "no shard manifests (manifest.shard-I-of-N.csv) to merge")
    if len(shards) > 1:
        counts = ", ".join(str(n) for n in sorted(shards))
        raise StoreError(out_dir, f"shard manifests of arrays of {counts} tasks; remove those of the older run")
    (count, found), = shards.items()
    missing = [str(i) for i in range(count) if i not in found]
    if missing:
        raise StoreError(out_dir, f"no manifest yet for shard(s) {', '.join(missing)} of {count}; wait for those tasks")
    rows: dict[str, ManifestRow] = {}
    for index in range(count):
        for row in read_manifest(found[index]):
            if row.slide in rows:
                raise StoreError(found[index], f"{row.slide} is in two shards' manifests")
            rows[row.slide] = row
    ordered = [rows[k] for k in sorted(rows)]
    manifest = write_manifest(out_dir / "manifest.csv", ordered)
    seconds = sum(r.seconds for r in ordered)
    summary_path(manifest).write_text(summarize(ordered, seconds, "summed over slides"), encoding="utf-8")
    return manifest


def _is_store(path: Path) -> bool:
    return path.suffix in STORE_SUFFIXES and ".tmp-" not in path.name


def _stores_in(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        # A .zarr directory is a store, not a folder to descend into.
        for d in list(dirs):
            if d.endswith(".zarr"):
                dirs.remove(d)
                if _is_store(Path(root, d)):
                    found.append(Path(root, d))
        found += [Path(root, f) for f in files if _is_store(Path(root, f))]
    return sorted(found)


def _stores_from_manifest(path: Path) -> list[Path]:
    # Skipped rows are stores finished by an earlier run with the same parameters: just as usable as ok rows.
    return [path.parent / r.store for r in read_manifest(path) if r.status in ("ok", "skipped") and r.store]


def find_stores(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """Stores named by paths, folders (searched recursively), globs or tiling manifests (manifest*.csv)."""
    if isinstance(sources, str | Path):
        sources = [sources]
    out: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.suffix == ".csv" and path.is_file():
            out += _stores_from_manifest(path)
        elif path.exists() and _is_store(path):
            out.append(path)
        elif path.is_dir():
            out += _stores_in(path)
        elif glob.has_magic(str(source)):
            matches = [Path(p) for p in sorted(glob.glob(str(source), recursive=True))]
            found = []
            for m in matches:
                if m.suffix == ".csv":
                    found += _stores_from_manifest(m)
                elif _is_store(m):
                    found.append(m)
            if not found:
                raise StoreError(source, "no patch stores match this pattern")
            out += found
        else:
            raise StoreError(source, "no such store, folder or manifest")
    # Keep the first occurrence of each store, in order.
    seen, unique = set(), []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
