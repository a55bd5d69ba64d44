"""Tile slides into patch stores: one slide (`tile_slide`) or a whole cohort (`tile_cohort`).

Per slide the parent process opens the slide, detects tissue on a thumbnail, plans the patch grid, writes the
QC image and creates the store. The plan is then cut into row-major chunks of one Zarr shard each, and the
chunks of all slides go through one queue of worker processes, so workers are busy across slides and within
one large slide alike. Zarr chunks are written by the workers straight into their own shard files (compression
runs in parallel too); HDF5 has a single writer, so its chunks come back to the parent. A slide's store is
renamed into place only when all of its chunks are in.
"""

import csv
import math
import multiprocessing
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pathgen.errors import ConfigError, PathgenError, StoreError
from pathgen.slide.tissue import MASK_MPP
from pathgen.store.manifest import ManifestRow, manifest_name, summarize, write_manifest
from pathgen.store.reader import open_store
from pathgen.store.writer import FORMATS, PatchStoreWriter, remove_path, write_images_shard

# Extensions picked up when a folder is given. OpenSlide 4 formats, DICOM, and plain images.
SLIDE_EXTENSIONS = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
    ".png", ".jpg", ".jpeg",
}  # fmt: skip
# The tissue mask: MASK_MPP um per pixel (16 px across a 256 px patch at 0.5 mpp), finer on small slides so their
# long side has MASK_MIN_SIDE px (but never finer than MASK_FINEST_MPP, where smoothing radii in um grow costly),
# coarser on huge ones so it never exceeds MASK_MAX_SIDE (memory, and the time to read and decode it). The QC
# picture is the mask's thumbnail, shrunk to at most QC_MAX_SIDE, or a finer one of QC_MIN_SIDE for small slides.
MASK_FINEST_MPP = 1.0
MASK_MIN_SIDE = 1024
MASK_MAX_SIDE = 4096
QC_MIN_SIDE = 1024
QC_MAX_SIDE = 2048


@dataclass(frozen=True)
class SlideJob:
    path: Path
    mpp: float | None = None  # per-slide override (CSV `mpp` column)
    fallback_mpp: float | None = None  # --slide-mpp: only for slides that record no resolution

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class TileParams:
    mpp: float = 0.5
    patch_size: int = 256
    fmt: str = "zarr"
    tissue_threshold: float = 0.5
    coords_only: bool = False
    reader: str = "openslide"


# ---------------------------------------------------------------------------------------------- slide lists


def _read_slide_csv(path: Path, fallback_mpp: float | None) -> list[SlideJob]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    key = "slide" if "slide" in columns else "path" if "path" in columns else None
    if key is None:
        raise ConfigError(path, "slide list needs a 'slide' or 'path' column")
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
        jobs.append(SlideJob(slide, mpp, fallback_mpp))
    return jobs


def _slides_in(folder: Path, skip: Path | None = None) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        # Never descend into stores, nor into the output folder (its qc/*.png are not slides).
        dirs[:] = [d for d in dirs if not d.endswith(".zarr") and (skip is None or Path(root, d).resolve() != skip)]
        dicom_taken = False
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            if suffix == ".dcm":  # OpenSlide opens a DICOM slide from any one file of its series folder
                if dicom_taken:
                    continue
                dicom_taken = True
            if suffix in SLIDE_EXTENSIONS:
                found.append(Path(root, name))
    return found


def list_slides(
    sources: Iterable[str | Path], slide_mpp: float | None = None, out_dir: str | Path | None = None
) -> list[SlideJob]:
    """Slides from files, folders (recursive, skipping `out_dir`) and CSV lists (column slide or path, optional
    mpp overriding the slide's own), sorted by path. `slide_mpp` is every slide's fallback mpp."""
    skip = Path(out_dir).resolve() if out_dir is not None else None
    jobs: dict[str, SlideJob] = {}
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise ConfigError(path, "no such slide, folder or slide list")
        if path.is_dir():
            found = [SlideJob(p, None, slide_mpp) for p in _slides_in(path, skip)]
        elif path.suffix.lower() == ".csv":
            found = _read_slide_csv(path, slide_mpp)
        else:
            found = [SlideJob(path, None, slide_mpp)]
        for job in found:
            jobs.setdefault(str(job.path), job)
    ordered = sorted(jobs.values(), key=lambda j: str(j.path))
    seen: dict[str, Path] = {}
    for job in ordered:
        if job.name in seen:
            raise ConfigError(job.path, f"same file name as {seen[job.name]}; stores are named by slide, rename one")
        seen[job.name] = job.path
    return ordered


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(None, f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(None, f"--shard {text}: need 0 <= I < N")
    return index, count


# ---------------------------------------------------------------------------------------------- reading


_OPEN_SLIDES: OrderedDict = OrderedDict()  # per process: a few open slide handles, reused across chunks


def _cached_slide(path: str, reader: str, mpp: float | None, fallback_mpp: float | None = None):
    from pathgen.slide import open_slide

    key = (path, reader, mpp, fallback_mpp)
    if key not in _OPEN_SLIDES:
        _OPEN_SLIDES[key] = open_slide(path, reader=reader, mpp=mpp, fallback_mpp=fallback_mpp)
        while len(_OPEN_SLIDES) > 4:
            _OPEN_SLIDES.popitem(last=False)[1].close()
    _OPEN_SLIDES.move_to_end(key)
    return _OPEN_SLIDES[key]


def _close_cached_slides() -> None:
    while _OPEN_SLIDES:
        _OPEN_SLIDES.popitem()[1].close()


@dataclass
class ChunkTask:
    slide: str
    reader: str
    mpp: float | None
    plan: object  # PatchPlan restricted to this chunk's coords
    start: int
    images_path: str | None  # Zarr: write here in the worker; None: send the pixels back
    shard: int = 0  # patches per Zarr shard
    fallback_mpp: float | None = None


_BUFFER: list[np.ndarray] = []  # per process: the reused pixel buffer of read_chunk


def _chunk_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array of `shape` backed by memory this process already touched.

    A fresh 24 MiB buffer per chunk costs a page fault per 4 KiB on first write; on a VM whose freed memory goes
    back to the host that was up to ~20% of a worker's CPU time. Reusing one buffer makes it a one-off cost.
    """
    size = int(np.prod(shape))
    if not _BUFFER or _BUFFER[0].size < size:
        _BUFFER[:] = [np.empty(size, dtype=np.uint8)]
    return _BUFFER[0][:size].reshape(shape)


def read_chunk(task: ChunkTask) -> tuple[str, int, object]:
    """Read one chunk of patches in row-major order. Returns ('ok', start, pixels or count) or ('error', start, msg).

    Errors come back as text: exceptions with custom constructors do not survive pickling between processes.
    """
    from pathgen.slide import read_patch

    try:
        slide = _cached_slide(task.slide, task.reader, task.mpp, task.fallback_mpp)
        s = task.plan.patch_size
        shape = (len(task.plan.coords), s, s, 3)
        # Zarr chunks never leave this process, so one buffer serves them all; HDF5 chunks go back to the parent.
        batch = _chunk_buffer(shape) if task.images_path is not None else np.empty(shape, dtype=np.uint8)
        for i, xy in enumerate(task.plan.coords):
            batch[i] = read_patch(slide, task.plan, (int(xy[0]), int(xy[1])))
        if task.images_path is None:
            return "ok", task.start, batch
        write_images_shard(task.images_path, task.start, batch, task.shard)
        return "ok", task.start, len(batch)
    except Exception as err:  # noqa: BLE001 - any failure fails this slide only, with a one-line reason
        return "error", task.start, _one_line(err)


def _one_line(err: BaseException) -> str:
    """The manifest's error cell: one line, without repeating the slide path the row already names."""
    text = str(err) if isinstance(err, PathgenError) else f"{type(err).__name__}: {err}"
    prefix = f"{getattr(err, 'path', None)}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return " ".join(text.split())[:500]


# ---------------------------------------------------------------------------------------------- one slide


def _magnification(value: float) -> float | int:
    value = round(value, 3)
    return int(value) if float(value).is_integer() else value


def level0_magnification(slide) -> int:
    """The nominal objective of level 0, a whole number: the slide's objective power, unless its mpp was overridden
    (then 10 / mpp, 0.25 um/px being the usual 40x), and 10 / mpp where the slide records no power."""
    if slide.objective_power is not None and slide.mpp_source != "override":
        return max(1, round(slide.objective_power))
    return max(1, round(10.0 / slide.mpp))


def store_attrs(job: SlideJob, slide, plan, params: TileParams) -> dict:
    """Root attributes of one slide's store: provenance and pathgen's description of the patches."""
    from pathgen import __version__

    stat = job.path.stat()
    level0_mag = level0_magnification(slide)
    downsample = float(slide.level_downsamples[plan.level])
    return {
        "name": job.name,
        "slide_path": str(job.path.resolve()),
        "slide_size": stat.st_size,
        "slide_mtime": stat.st_mtime,
        "slide_format": slide.format,
        "reader": slide.reader,
        "mpp_level0": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "mpp_override": job.mpp,
        "objective_power": slide.objective_power,
        "target_mpp": float(plan.target_mpp),
        "patch_size_level0": int(plan.patch_size_level0),
        "level0_width": int(slide.dimensions[0]),
        "level0_height": int(slide.dimensions[1]),
        "level0_bounds": [int(v) for v in slide.bounds],
        "level0_magnification": level0_mag,
        "target_magnification": _magnification(level0_mag * slide.mpp / plan.target_mpp),
        "overlap": 0,
        "patch_level": int(plan.level),
        "read_size": int(plan.read_size),
        "downsample": [downsample, downsample],
        "level_dim": [int(v) for v in slide.level_dimensions[plan.level]],
        "downsampled_level_dim": [int(v) for v in slide.level_dimensions[plan.level]],
        "tissue_threshold": float(params.tissue_threshold),
        "pathgen_version": __version__,
    }


def reader_attrs(slide, plan) -> dict:
    """The `coords` attributes CLAM and TRIDENT read, describing the same level-0 square for both.

    CLAM reads `read_region(coord, patch_level, (patch_size,) * 2)`: there `patch_size` is the side read at
    `patch_level`, not the stored side, and resizing to `target_patch_size` (CLAM's --target_patch_size) gives
    the stored patch. TRIDENT reads `patch_size` pixels at `target_magnification` over
    `patch_size * level0_magnification / target_magnification` level-0 pixels, so `target_magnification` here
    is the magnification of the pixels read at `patch_level`; it equals the stored patches' magnification whenever
    the target resolution is a pyramid level (read size = patch size). `custom_downsample` stays 1: TRIDENT's
    legacy reader multiplies the read area by it, while CLAM takes it from its command line, never from the file.
    """
    level0_mag = level0_magnification(slide)
    return {
        "patch_size": int(plan.read_size),
        "patch_level": int(plan.level),
        "custom_downsample": 1,
        "target_patch_size": int(plan.patch_size),
        "patch_size_level0": int(plan.patch_size_level0),
        "level0_magnification": level0_mag,
        "target_magnification": _magnification(level0_mag * plan.read_size / plan.patch_size_level0),
    }


def _is_up_to_date(store_path: Path, job: SlideJob, params: TileParams) -> int | None:
    """n_patches of a finished store made from this very slide file with these parameters, else None."""
    if not store_path.exists():
        return None
    try:
        with open_store(store_path) as store:
            attrs, n = store.attrs, len(store)
    except StoreError:
        return None
    stat = job.path.stat()
    wanted = {
        "slide_size": stat.st_size,
        "slide_mtime": stat.st_mtime,
        "target_mpp": float(params.mpp),
        "patch_size": params.patch_size,
        "tissue_threshold": float(params.tissue_threshold),
        "coords_only": params.coords_only,
        "reader": params.reader,
        "mpp_override": job.mpp,
    }
    if attrs.get("mpp_source") == "fallback" and attrs.get("mpp_level0") != job.fallback_mpp:
        return None  # tiled with another --slide-mpp, which this slide did use
    return n if all(attrs.get(k) == v for k, v in wanted.items()) else None


def _remove_stale_temps(store_path: Path) -> None:
    """Delete temp stores left by killed runs (their pid is gone); leave live jobs' temps alone."""
    for tmp in store_path.parent.glob(f"{store_path.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            if pid != os.getpid():
                os.kill(pid, 0)
                continue  # still running (another job on this machine)
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        remove_path(tmp)


@dataclass
class _SlideRun:
    """A slide being tiled: its writer, plan and how many chunks are still out."""

    job: SlideJob
    row: ManifestRow
    t0: float
    writer: PatchStoreWriter | None = None
    plan: object = None
    outstanding: int = 0
    submitted_all: bool = False
    error: str = ""
    progress_task: object = None
    chunks: list = field(default_factory=list)  # (start, stop) patch ranges, one Zarr shard each
    gen: Iterator | None = None


def _plan_slide(job: SlideJob, out_dir: Path, params: TileParams, overwrite: bool) -> _SlideRun:
    """Open, detect tissue, plan, write QC and create the store. Returns a run whose row may already be final."""
    from pathgen.slide import detect_tissue, plan_patches, render_qc

    t0 = time.perf_counter()
    store_path = out_dir / f"{job.name}{FORMATS[params.fmt]}"
    run = _SlideRun(job, ManifestRow(slide=str(job.path), status="ok"), t0)
    try:
        _remove_stale_temps(store_path)
        if not overwrite and (n := _is_up_to_date(store_path, job, params)) is not None:
            run.row = ManifestRow(str(job.path), "skipped", n, 0.0, "", store_path.name)
            return run
        slide = _cached_slide(str(job.path), params.reader, job.mpp, job.fallback_mpp)
        bounds = slide.bounds
        extent = max(bounds[2], bounds[3])
        thumb, thumb_ds = slide.thumbnail(math.ceil(extent / mask_downsample(extent, slide.mpp)), region=bounds)
        mask = detect_tissue(thumb, mpp=slide.mpp * thumb_ds)
        plan = plan_patches(
            slide, params.mpp, params.patch_size, mask, thumb_ds, params.tissue_threshold, region=bounds
        )
        (out_dir / "qc").mkdir(exist_ok=True)
        if max(thumb.shape[:2]) < QC_MIN_SIDE and thumb_ds > 1:
            qc, qc_ds = slide.thumbnail(QC_MIN_SIDE, region=bounds)
        else:
            qc, qc_ds = _shrink(thumb, thumb_ds, QC_MAX_SIDE)
        render_qc(qc, mask, plan, qc_ds, out_dir / "qc" / f"{job.name}.png", origin=bounds[:2])
        attrs = store_attrs(job, slide, plan, params) | {"tissue_mask_mpp": float(slide.mpp * thumb_ds)}
        run.writer = PatchStoreWriter(
            store_path,
            plan.coords,
            plan.tissue_fraction,
            plan.patch_size,
            attrs,
            params.fmt,
            params.coords_only,
            coords_attrs=reader_attrs(slide, plan),
        )
        run.plan = plan
        run.row.store = store_path.name
        run.row.n_patches = len(plan.coords)
        if len(plan.coords) == 0:
            print(f"warning: {job.path}: no tissue patches at threshold {params.tissue_threshold}", file=sys.stderr)
        if not params.coords_only:
            step = run.writer.shard
            run.chunks = [(a, min(a + step, len(plan.coords))) for a in range(0, len(plan.coords), step)]
    except Exception as err:  # noqa: BLE001 - this slide fails, the cohort goes on
        run.error = _one_line(err)
        if run.writer is not None:
            run.writer.abort()
            run.writer = None
    return run


def mask_downsample(extent: int, mpp: float) -> float:
    """Level-0 pixels per tissue-mask pixel for a scanned area whose long side is `extent` level-0 pixels."""
    ds = min(MASK_MPP / mpp, extent / MASK_MIN_SIDE)  # small slides: a finer mask costs little
    return max(ds, MASK_FINEST_MPP / mpp, extent / MASK_MAX_SIDE, 1.0)


def _shrink(image: np.ndarray, downsample: float, max_side: int) -> tuple[np.ndarray, float]:
    """`image` reduced by a whole factor so that its long side is at most `max_side`; and its new downsample."""
    from PIL import Image

    factor = math.ceil(max(image.shape[:2]) / max_side)
    if factor <= 1:
        return image, downsample
    return np.asarray(Image.fromarray(image).reduce(factor)), downsample * factor


def _chunk_tasks(run: _SlideRun, params: TileParams) -> Iterator[ChunkTask]:
    zarr_images = str(run.writer.images_path) if params.fmt == "zarr" else None
    for a, b in run.chunks:
        if run.error:
            return
        sub = replace(run.plan, coords=run.plan.coords[a:b], tissue_fraction=run.plan.tissue_fraction[a:b])
        yield ChunkTask(
            str(run.job.path), params.reader, run.job.mpp, sub, a, zarr_images, run.writer.shard, run.job.fallback_mpp
        )


def _finish(run: _SlideRun) -> ManifestRow:
    """Close (or throw away) the slide's store and fill in its manifest row."""
    if run.row.status == "skipped":
        return run.row
    if not run.error:
        try:
            run.writer.close()
        except Exception as err:  # noqa: BLE001
            run.error = _one_line(err)
    if run.error:
        if run.writer is not None:
            run.writer.abort()
        run.row = ManifestRow(str(run.job.path), "failed", 0, 0.0, run.error, "")
    run.row.seconds = time.perf_counter() - run.t0
    return run.row


class _InlineExecutor:
    """workers=1: run chunks in this process, through the same code path as the pool."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _executor(workers: int):
    if workers <= 1:
        return _InlineExecutor()
    # OpenSlide handles are not fork-safe: workers start clean (forkserver on Linux, spawn elsewhere).
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    for _ in range(workers):  # start the workers (and their imports) now, while the parent plans the first slide
        pool.submit(_warm_up)
    return pool


def _warm_up() -> None:
    import pathgen.slide  # noqa: F401  (openslide, PIL, numpy)


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )


# ---------------------------------------------------------------------------------------------- cohort


def _run(jobs: Sequence[SlideJob], out_dir: Path, params: TileParams, workers: int, overwrite: bool, on_row):
    """Tile `jobs`, calling on_row(row) as each slide finishes (in completion order)."""
    runs = iter(jobs)
    active: list[_SlideRun] = []  # slides with chunks still to submit, in order
    in_flight: dict[Future, _SlideRun] = {}
    max_in_flight = 2 * max(1, workers)  # bounds memory: every chunk in flight holds one shard of pixels
    try:
        with _executor(workers) as pool, _progress() as bar:
            cohort_task = bar.add_task("slides", total=len(jobs))

            def finish(run: _SlideRun) -> None:
                on_row(_finish(run))
                if run.progress_task is not None:
                    bar.remove_task(run.progress_task)
                bar.advance(cohort_task)

            def next_task() -> tuple[ChunkTask, _SlideRun] | None:
                while True:
                    while active:
                        run = active[0]
                        task = next(run.gen, None)
                        if task is not None:
                            return task, run
                        active.pop(0)
                        run.submitted_all = True
                        if run.outstanding == 0:
                            finish(run)
                    job = next(runs, None)
                    if job is None:
                        return None
                    run = _plan_slide(job, out_dir, params, overwrite)
                    if run.row.status == "skipped" or run.error or not run.chunks:
                        finish(run)
                        continue
                    run.progress_task = bar.add_task(job.name, total=len(run.plan.coords))
                    run.gen = _chunk_tasks(run, params)
                    active.append(run)

            exhausted = False
            while not exhausted or in_flight:
                while not exhausted and len(in_flight) < max_in_flight:
                    item = next_task()
                    if item is None:
                        exhausted = True
                        break
                    task, run = item
                    run.outstanding += 1
                    in_flight[pool.submit(read_chunk, task)] = run
                if not in_flight:
                    continue
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in done:
                    run = in_flight.pop(future)
                    run.outstanding -= 1
                    try:
                        status, start, payload = future.result()
                    except Exception as err:  # noqa: BLE001 - e.g. a worker killed by the OOM killer
                        status, start, payload = "error", 0, _one_line(err)
                    if status == "error":
                        run.error = run.error or payload
                    elif not run.error:
                        if isinstance(payload, np.ndarray):
                            run.writer.write(start, payload)
                        n = payload if isinstance(payload, int) else len(payload)
                        bar.advance(run.progress_task, n)
                    if run.error and run in active:  # stop feeding a failed slide
                        active.remove(run)
                        run.submitted_all = True
                    if run.submitted_all and run.outstanding == 0:
                        finish(run)
    finally:
        _close_cached_slides()


def tile_cohort(
    slides,
    out_dir,
    *,
    mpp: float = 0.5,
    patch_size: int = 256,
    fmt: str = "zarr",
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    tissue_threshold: float = 0.5,
    coords_only: bool = False,
    reader: str = "openslide",
    slide_mpp: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Tile every slide of this shard into `out_dir`; returns the manifest path. summary.txt sits beside it.

    slides: files, folders or CSV lists (see `list_slides`). A slide that fails is recorded in the manifest and
    the others carry on; finished stores from an earlier run with the same slide file and parameters are skipped.
    """
    if isinstance(slides, str | Path):
        slides = [slides]
    if fmt not in FORMATS:
        raise ConfigError(None, f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if mpp <= 0 or patch_size < 1 or workers < 1 or not 0 <= tissue_threshold <= 1:
        raise ConfigError(None, "need mpp > 0, patch size >= 1, workers >= 1 and 0 <= tissue threshold <= 1")
    if slide_mpp is not None and slide_mpp <= 0:
        raise ConfigError(None, f"--slide-mpp must be positive, got {slide_mpp}")
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(None, f"shard {index}/{count}: need 0 <= I < N")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = TileParams(mpp, patch_size, fmt, tissue_threshold, coords_only, reader)
    jobs = list_slides(slides, slide_mpp, out_dir)[index::count]

    manifest = out_dir / manifest_name(shard)
    rows: dict[str, ManifestRow] = {}
    t0 = time.perf_counter()

    def on_row(row: ManifestRow) -> None:
        rows[row.slide] = row
        # Rewritten after every slide, in cohort order, so a killed run still leaves an honest partial manifest.
        write_manifest(manifest, [rows[str(j.path)] for j in jobs if str(j.path) in rows])

    _run(jobs, out_dir, params, workers, overwrite, on_row)
    ordered = [rows[str(j.path)] for j in jobs]
    write_manifest(manifest, ordered)
    summary_path(manifest).write_text(summarize(ordered, time.perf_counter() - t0), encoding="utf-8")
    return manifest


def tile_slide(
    slide: str | Path,
    out_dir: str | Path,
    *,
    params: TileParams = TileParams(),
    workers: int = 1,
    slide_mpp: float | None = None,
    overwrite: bool = False,
) -> ManifestRow:
    """Tile one slide into `out_dir` (no manifest is written); returns its manifest row."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    _run([SlideJob(Path(slide), slide_mpp)], out_dir, params, workers, overwrite, rows.append)
    return rows[0]


def summary_path(manifest: Path) -> Path:
    """summary.txt beside manifest.csv (summary.shard-I-of-N.txt beside manifest.shard-I-of-N.csv)."""
    return manifest.with_name(manifest.name.replace("manifest", "summary", 1).removesuffix(".csv") + ".txt")
