"""Which slides a tiling run covers: files, folders and CSV lists in; named, sharded `SlideJob`s out.

A folder is searched recursively. A DICOM series (a folder of .dcm files, or of extensionless files that start
like DICOM) is one slide named after its folder. Plain PNG/JPEG files lying beside slide files are the scanner's
macro and label pictures and are skipped with a notice, unless listed explicitly. Slides sharing a file name in
different folders get distinct names from their paths. Array jobs take their share by a stable hash of each
slide's name, so adding a slide to the cohort moves no other slide to another shard.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pathgen.errors import ConfigError
from pathgen.slide.reader import WSI_SUFFIXES

PLAIN_IMAGES = {".png", ".jpg", ".jpeg"}
# Extensions picked up when a folder is given: OpenSlide 4's formats, DICOM, and plain images.
SLIDE_EXTENSIONS = WSI_SUFFIXES | {".tif", ".tiff"} | PLAIN_IMAGES
_CSV_SPECIAL = {"slide", "path", "mpp"}  # the slide list's own columns; any other is carried to the manifest


@dataclass(frozen=True)
class SlideJob:
    path: Path  # absolute
    mpp: float | None = None  # per-slide override (CSV `mpp` column)
    fallback_mpp: float | None = None  # --slide-mpp: only for slides that record no resolution
    name: str = ""  # the store's name (unique within the run); set by list_slides, else the file's stem
    key: str = ""  # what sharding hashes: the name before duplicates were told apart
    extra: dict = field(default_factory=dict, compare=False)  # the slide list's other columns (label, case id)

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", self.path.stem)
        if not self.key:
            object.__setattr__(self, "key", self.name)


def is_dicom(path: Path) -> bool:
    """A .dcm file, or a file whose 128-byte preamble is followed by DICOM's 'DICM' marker."""
    if path.suffix.lower() == ".dcm":
        return True
    if not _maybe_dicom(path.name):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _maybe_dicom(name: str) -> bool:
    """Names worth sniffing: no extension, or a numeric one (files named by their DICOM instance UID)."""
    suffix = Path(name).suffix
    return suffix == "" or suffix[1:].isdigit()


def _read_slide_csv(path: Path, fallback_mpp: float | None) -> list[SlideJob]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    key = "slide" if "slide" in columns else "path" if "path" in columns else None
    if key is None:
        raise ConfigError(path, "slide list needs a 'slide' or 'path' column")
    extra_columns = [c for c in columns if c not in _CSV_SPECIAL]
    jobs = []
    for line, row in enumerate(rows, start=2):
        slide = Path(row[key].strip())
        if not slide.is_absolute():  # relative to the CSV, so a cohort folder can move as a whole
            slide = path.parent / slide
        mpp = None
        if (row.get("mpp") or "").strip():
            try:
                mpp = float(row["mpp"])
            except ValueError:
                raise ConfigError(path, f"line {line}: mpp {row['mpp']!r} is not a number") from None
            if mpp <= 0:
                raise ConfigError(path, f"line {line}: mpp must be positive, got {mpp}")
        extra = {c: row.get(c) or "" for c in extra_columns}
        jobs.append(_job(slide, mpp, fallback_mpp, extra))
    return jobs


def _job(path: Path, mpp: float | None, fallback_mpp: float | None, extra: dict | None = None) -> SlideJob:
    path = path.absolute()
    # OpenSlide opens a DICOM series from any one of its files; the series is the folder.
    name = path.parent.name if is_dicom(path) and path.parent.name else path.stem
    return SlideJob(path, mpp, fallback_mpp, name=name, extra=extra or {})


def _slides_in(folder: Path, skip: Path | None, notices: list[str]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        # Never descend into stores, nor into the output folder (its qc/*.png are not slides).
        dirs[:] = sorted(
            d for d in dirs if not d.endswith(".zarr") and (skip is None or Path(root, d).resolve() != skip)
        )
        files = sorted(files)
        dicom = [n for n in files if is_dicom(Path(root, n))]
        if dicom:
            found.append(Path(root, dicom[0]))
        slides = [n for n in files if Path(n).suffix.lower() in SLIDE_EXTENSIONS and n not in dicom]
        images = [n for n in slides if Path(n).suffix.lower() in PLAIN_IMAGES]
        if images and (dicom or len(images) < len(slides)):
            notices.append(
                f"notice: {root}: skipped {len(images)} plain image(s) beside the slides ({', '.join(images[:3])}"
                f"{', ...' if len(images) > 3 else ''}), taken for macro/label pictures; list them to tile them"
            )
            slides = [n for n in slides if n not in images]
        found += [Path(root, n) for n in slides]
    return found


def _distinct_names(jobs: list[SlideJob]) -> list[SlideJob]:
    """Slides with the same name get their path below the folder all of them share, '/' written '__'."""
    by_name: dict[str, list[SlideJob]] = {}
    for job in jobs:
        by_name.setdefault(job.name, []).append(job)
    renamed = {}
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        named = [j.path.parent if j.name != j.path.stem else j.path.with_suffix("") for j in group]
        common = Path(os.path.commonpath([str(p) for p in named]))
        for job, p in zip(group, named, strict=True):
            renamed[job.path] = "__".join(p.relative_to(common).parts) or name
    out = [replace(j, name=renamed[j.path], key=j.name) if j.path in renamed else j for j in jobs]
    seen: dict[str, Path] = {}
    for job in out:
        if job.name in seen:
            raise ConfigError(job.path, f"store name {job.name!r} is also {seen[job.name]}'s; rename one of them")
        seen[job.name] = job.path
    return out


def list_slides(
    sources: Iterable[str | Path], slide_mpp: float | None = None, out_dir: str | Path | None = None
) -> list[SlideJob]:
    """Slides from files, folders (recursive, skipping `out_dir`) and CSV lists (column slide or path, optional
    mpp overriding the slide's own, other columns carried to the manifest), sorted by path, with distinct names.
    `slide_mpp` is every slide's fallback mpp."""
    skip = Path(out_dir).resolve() if out_dir is not None else None
    jobs: dict[Path, SlideJob] = {}
    notices: list[str] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise ConfigError(path, "no such slide, folder or slide list")
        if path.is_dir():
            found = [_job(p, None, slide_mpp) for p in _slides_in(path, skip, notices)]
        elif path.suffix.lower() == ".csv":
            found = _read_slide_csv(path, slide_mpp)
        else:
            found = [_job(path, None, slide_mpp)]
        for job in found:
            jobs.setdefault(job.path, job)
    for notice in notices:
        print(notice, file=sys.stderr)
    return _distinct_names(sorted(jobs.values(), key=lambda j: str(j.path)))


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(None, f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(None, f"--shard {text}: need 0 <= I < N")
    return index, count


def shard_of(job: SlideJob, count: int) -> int:
    """The shard a slide belongs to: a hash of its name, the same in every array task and on every machine."""
    digest = hashlib.sha256(job.key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count
