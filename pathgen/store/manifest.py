"""The tiling manifest (one CSV row per slide) and finding stores from paths, folders, globs or manifests."""

import csv
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pathgen.errors import StoreError

STORE_SUFFIXES = (".zarr", ".h5")


@dataclass
class ManifestRow:
    slide: str
    status: str  # ok | failed | skipped
    n_patches: int = 0
    seconds: float = 0.0
    error: str = ""
    store: str = ""  # relative to the manifest's folder


def manifest_name(shard: tuple[int, int]) -> str:
    """manifest.csv, or manifest.shard-I-of-N.csv so parallel array jobs never write the same file."""
    index, count = shard
    return "manifest.csv" if count == 1 else f"manifest.shard-{index}-of-{count}.csv"


def write_manifest(path: Path, rows: Sequence[ManifestRow]) -> Path:
    """Write atomically, so a reader never sees half a manifest."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(ManifestRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row) | {"seconds": f"{row.seconds:.2f}"})
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"slide", "status", "store"} <= set(reader.fieldnames):
                raise StoreError(path, "not a tiling manifest (needs columns slide, status, store)")
            return [
                ManifestRow(
                    slide=r["slide"],
                    status=r["status"],
                    n_patches=int(r.get("n_patches") or 0),
                    seconds=float(r.get("seconds") or 0),
                    error=r.get("error") or "",
                    store=r["store"],
                )
                for r in reader
            ]
    except OSError as err:
        raise StoreError(path, f"cannot read manifest ({err.strerror})") from None


def summarize(rows: Sequence[ManifestRow], seconds: float) -> str:
    """A few human-readable lines: counts, patches, time, and each failure's reason."""
    count = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
    patches = sum(r.n_patches for r in rows if r.status != "failed")
    lines = [
        f"slides: {len(rows)}  ok: {count['ok']}  skipped: {count['skipped']}  failed: {count['failed']}",
        f"patches: {patches}  time: {seconds:.1f} s",
    ]
    empty = [r.slide for r in rows if r.status == "ok" and r.n_patches == 0]
    if empty:
        lines.append(f"warning: no tissue patches in {len(empty)} slide(s): " + ", ".join(empty))
    lines += [f"failed: {r.slide}: {r.error}" for r in rows if r.status == "failed"]
    return "\n".join(lines) + "\n"


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
