"""Tile a cohort of slides into patch stores (`tile_cohort`).

Everything that touches a slide runs in a pool of worker processes; the parent schedules and writes HDF5. Each
slide is planned in a worker (`plan_task`: open, find the tissue, lay the grid, draw the QC picture), then its
grid is cut into row-major chunks of one Zarr shard each, and the chunks of all slides go through the same
queue, so workers are busy across slides and within one large slide alike. Zarr chunks are written by the
workers straight into their own shard files (compression runs in parallel too); HDF5 has a single writer, so its
chunks come back to the parent. A slide's store is renamed into place only when all of its chunks are in.

A worker that dies (the out-of-memory killer, a segfault in a native library) breaks the pool. The pool is then
rebuilt and every task that was in flight is retried once, alone, so a task that kills its worker again is the
culprit: only its slide fails, with a one-line reason, and the rest of the cohort carries on. `workers=0` runs
everything in this process, without that protection (for debugging).
"""

import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathgen.errors import ConfigError, one_line
from pathgen.slide.discovery import SlideJob, list_slides, parse_shard, shard_of
from pathgen.store.codecs import DEFAULT_CODEC, DEFAULT_QUALITY, PatchCodec
from pathgen.store.manifest import ManifestRow, manifest_name, summarize, summary_path, write_manifest
from pathgen.store.writer import FORMATS, write_images_shard

__all__ = ["TileParams", "tile_cohort", "list_slides", "parse_shard", "summary_path"]


@dataclass(frozen=True)
class TileParams:
    mpp: float | None = 0.5  # None: by magnification
    patch_size: int = 256
    fmt: str = "zarr"
    tissue_threshold: float = 0.5
    coords_only: bool = False
    reader: str = "auto"
    magnification: float | None = None
    overlap: int = 0
    roi: str | None = None  # folder of GeoJSON annotations, one per slide
    codec: str = DEFAULT_CODEC
    quality: int = DEFAULT_QUALITY

    @property
    def patch_codec(self) -> PatchCodec:
        return PatchCodec(self.codec, self.quality)


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
    images_path: str | None  # Zarr: write here in the worker; None: send the pixels (or encoded patches) back
    shard: int = 0  # patches per Zarr shard
    fallback_mpp: float | None = None
    codec: PatchCodec = PatchCodec()


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
    """Read one chunk of patches in row-major order, a region at a time (patch by patch for reader "openslide").

    Returns ('ok', start, count) once written to Zarr, ('ok', start, pixels or encoded patches) for the parent to
    write, or ('error', start, msg). Errors come back as text: exceptions with custom constructors do not
    survive pickling between processes.
    """
    from pathgen.slide.grid import REGION_SIDE, read_patches

    try:
        slide = _cached_slide(task.slide, task.reader, task.mpp, task.fallback_mpp)
        s = task.plan.patch_size
        shape = (len(task.plan.coords), s, s, 3)
        # Zarr chunks never leave this process, so one buffer serves them all; HDF5 chunks go back to the parent.
        batch = _chunk_buffer(shape) if task.images_path is not None else np.empty(shape, dtype=np.uint8)
        # --reader openslide is the old path, for comparison and as a way out: one read_region call per patch.
        read_patches(slide, task.plan, task.plan.coords, batch, 0 if task.reader == "openslide" else REGION_SIDE)
        if task.images_path is None:  # HDF5: encode here, in parallel, and send back ~10x fewer bytes
            return "ok", task.start, [task.codec.encode(p) for p in batch] if task.codec.lossy else batch
        write_images_shard(task.images_path, task.start, batch, task.shard, task.codec)
        return "ok", task.start, len(batch)
    except Exception as err:  # noqa: BLE001 - any failure fails this slide only, with a one-line reason
        return "error", task.start, one_line(err)


# ---------------------------------------------------------------------------------------------- planning


@dataclass
class PlanTask:
    job: SlideJob
    params: TileParams
    qc_dir: str


def plan_task(task: PlanTask) -> tuple[str, object]:
    """Plan one slide in a worker: ('ok', SlidePlan) or ('error', one-line reason)."""
    from pathgen.slide.planning import plan_slide

    try:
        job = task.job
        slide = _cached_slide(str(job.path), task.params.reader, job.mpp, job.fallback_mpp)
        return "ok", plan_slide(slide, job, task.params, Path(task.qc_dir))
    except Exception as err:  # noqa: BLE001 - this slide fails, the cohort goes on
        return "error", one_line(err)


# Pure-Python/numpy libraries every worker needs, imported once by the forkserver (WorkerPool's preload) rather
# than by each worker and by the first slide's planning (~1 s; scipy.ndimage alone ~0.65 s). OpenSlide is not
# among them: a worker loads it itself, after the fork.
FORKSERVER_PRELOAD = ("numpy", "PIL.Image", "scipy.ndimage", "skimage.filters")


def warm_up() -> None:
    """What every worker imports before its first task: pathgen's planning modules. The libraries under them come
    with the forkserver's preload; OpenSlide and tifffile load when the worker first opens a slide."""
    import pathgen.slide.planning  # noqa: F401


def warm_up_parent(fmt: str) -> None:
    """What the parent needs once the first plan is back, imported while that plan runs: the store writer's backend
    (~0.25 s). Not the QC picture's libraries as well: with them (~0.65 s, then) the plan came back first and the
    slide's store waited for them; they load when the first picture is drawn, after its first chunks are out."""
    if fmt == "zarr":
        import zarr  # noqa: F401
    else:
        import h5py  # noqa: F401


# ---------------------------------------------------------------------------------------------- cohort


def _run(jobs: Sequence[SlideJob], out_dir: Path, params: TileParams, workers: int, overwrite: bool, on_row):
    """Tile `jobs`, calling on_row(row) as each slide finishes (in completion order)."""
    from pathgen.slide.scheduler import run_cohort

    try:  # the tasks are this module's: looked up as they run, so a test may swap one for a dying stand-in
        run_cohort(jobs, out_dir, params, workers, overwrite, on_row, sys.modules[__name__])
    finally:
        _close_cached_slides()


def tile_cohort(
    slides,
    out_dir,
    *,
    mpp: float | None = None,
    magnification: float | None = None,
    patch_size: int = 256,
    overlap: int = 0,
    fmt: str = "zarr",
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    tissue_threshold: float = 0.5,
    coords_only: bool = False,
    reader: str = "auto",
    codec: str = DEFAULT_CODEC,
    quality: int = DEFAULT_QUALITY,
    slide_mpp: float | None = None,
    roi: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Tile every slide of this shard into `out_dir`; returns the manifest path. summary.txt sits beside it.

    slides: files, folders or CSV lists (see `list_slides`). A slide that fails is recorded in the manifest and
    the others carry on; finished stores from an earlier run with the same slide file and parameters are skipped.
    mpp / magnification: the target resolution, one or the other (default 0.5 um/px); by magnification, each
    slide's own level-0 magnification (objective power, else 10 / mpp) sets the scale.
    overlap: pixels at the target resolution that neighbouring patches share.
    workers: processes reading slides (0: all in this process, without protection against a crashing reader).
    shard (I, N): this array task's slides, chosen by a stable hash of each slide's name.
    roi: a folder of GeoJSON files (QuPath's export), <slide name>.geojson each: patches only inside their
    regions, labelled with their class names; "Tissue" features replace the detected tissue.
    reader: "auto" (tifffile's tile decoding for SVS / tiled TIFF, OpenSlide region reads otherwise), "tifffile",
    "openslide" (OpenSlide, patch by patch) or "tiatoolbox". codec/quality: how patches are stored (store/codecs.py).
    """
    if isinstance(slides, str | Path):
        slides = [slides]
    if fmt not in FORMATS:
        raise ConfigError(None, f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if mpp is not None and magnification is not None:
        raise ConfigError(None, "give --mpp or --magnification, not both")
    if mpp is None and magnification is None:
        mpp = 0.5
    if (mpp is not None and mpp <= 0) or (magnification is not None and magnification <= 0):
        raise ConfigError(None, f"--mpp and --magnification must be positive, got {mpp or magnification}")
    if patch_size < 1 or workers < 0 or not 0 <= tissue_threshold <= 1:
        raise ConfigError(None, "need patch size >= 1, workers >= 0 and 0 <= tissue threshold <= 1")
    if not 0 <= overlap < patch_size:
        raise ConfigError(None, f"--overlap must be at least 0 and less than the patch size, got {overlap}")
    if roi is not None and not Path(roi).is_dir():
        raise ConfigError(roi, "--roi takes a folder of GeoJSON files, one per slide (<slide name>.geojson)")
    if slide_mpp is not None and slide_mpp <= 0:
        raise ConfigError(None, f"--slide-mpp must be positive, got {slide_mpp}")
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(None, f"shard {index}/{count}: need 0 <= I < N")
    from pathgen.slide.reader import check_reader

    if (why := check_reader(reader)) is not None:  # once, up front, not slide by slide
        raise ConfigError(None, why)
    PatchCodec(codec, quality)  # validates --codec and --quality once, up front
    out_dir = Path(out_dir)
    jobs = [j for j in list_slides(slides, slide_mpp, out_dir) if shard_of(j, count) == index]
    out_dir.mkdir(parents=True, exist_ok=True)
    roi = str(Path(roi).resolve()) if roi is not None else None
    params = TileParams(
        mpp, patch_size, fmt, tissue_threshold, coords_only, reader, magnification, overlap, roi, codec, quality
    )

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
