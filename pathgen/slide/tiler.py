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

import multiprocessing
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pathgen.errors import ConfigError, PathgenError, StoreError
from pathgen.slide.discovery import SlideJob, list_slides, parse_shard, shard_of
from pathgen.store.manifest import ManifestRow, manifest_name, summarize, summary_path, write_manifest
from pathgen.store.reader import open_store
from pathgen.store.writer import FORMATS, PatchStoreWriter, remove_stale_temps, write_images_shard

__all__ = ["TileParams", "tile_cohort", "list_slides", "parse_shard", "summary_path"]


@dataclass(frozen=True)
class TileParams:
    mpp: float | None = 0.5  # None: by magnification
    patch_size: int = 256
    fmt: str = "zarr"
    tissue_threshold: float = 0.5
    coords_only: bool = False
    reader: str = "openslide"
    magnification: float | None = None
    overlap: int = 0
    roi: str | None = None  # folder of GeoJSON annotations, one per slide


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
        return "error", _one_line(err)


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
        "tile_magnification": params.magnification,
        "patch_size": params.patch_size,
        "overlap": params.overlap,
        "tissue_threshold": float(params.tissue_threshold),
        "coords_only": params.coords_only,
        "reader": params.reader,
        "mpp_override": job.mpp,
        "roi_path": None,
        "roi_mtime": None,
    }
    if params.mpp is not None:
        wanted["target_mpp"] = float(params.mpp)
    if params.roi is not None:  # re-tile when the annotations change
        from pathgen.slide.planning import roi_file

        try:
            roi = roi_file(params.roi, job)
        except PathgenError:
            return None
        wanted.update(roi_path=str(roi.resolve()), roi_mtime=roi.stat().st_mtime)
    if attrs.get("mpp_source") == "fallback" and attrs.get("mpp_level0") != job.fallback_mpp:
        return None  # tiled with another --slide-mpp, which this slide did use
    return n if all(attrs.get(k) == v for k, v in wanted.items()) else None


# ---------------------------------------------------------------------------------------------- one slide


@dataclass
class _SlideRun:
    """A slide being tiled: its writer, plan and how many of its tasks are still out."""

    job: SlideJob
    row: ManifestRow
    t0: float
    store_path: Path
    writer: PatchStoreWriter | None = None
    plan: object = None
    outstanding: int = 0  # tasks submitted or waiting for a retry
    submitted_all: bool = False
    finished: bool = False
    error: str = ""
    chunks: list = field(default_factory=list)  # (start, stop) patch ranges, one Zarr shard each
    gen: Iterator | None = None


@dataclass
class _Work:
    """One task for the pool, and what to say about it if it kills its worker."""

    run: _SlideRun
    fn: Callable
    arg: object
    what: str
    retried: bool = False
    counted: bool = False  # in its slide's `outstanding`


def _start(job: SlideJob, out_dir: Path, params: TileParams, overwrite: bool) -> _SlideRun:
    """A run for `job`; its row is already final when the slide needs no tiling (or cannot even be looked at)."""
    store_path = out_dir / f"{job.name}{FORMATS[params.fmt]}"
    run = _SlideRun(job, _row(job, "ok"), time.perf_counter(), store_path)
    try:
        remove_stale_temps(store_path)
        if not overwrite and (n := _is_up_to_date(store_path, job, params)) is not None:
            run.row = _row(job, "skipped", n, store=store_path.name)
            run.submitted_all = True
    except Exception as err:  # noqa: BLE001 - e.g. the slide file vanished
        run.error = _one_line(err)
        run.submitted_all = True
    return run


def _row(job: SlideJob, status: str, n: int = 0, error: str = "", store: str = "") -> ManifestRow:
    return ManifestRow(str(job.path), status, n, 0.0, error, store, dict(job.extra))


def _planned(run: _SlideRun, planned, params: TileParams) -> None:
    """Create the store of a planned slide and cut its grid into chunks."""
    plan = planned.plan
    run.writer = PatchStoreWriter(
        run.store_path,
        plan.coords,
        plan.tissue_fraction,
        plan.patch_size,
        planned.attrs,
        params.fmt,
        params.coords_only,
        labels=planned.labels,
        classes=planned.classes,
        coords_attrs=planned.coords_attrs,
    )
    run.plan = plan
    run.row.store = run.store_path.name
    run.row.n_patches = len(plan.coords)
    if not params.coords_only:
        step = run.writer.shard
        run.chunks = [(a, min(a + step, len(plan.coords))) for a in range(0, len(plan.coords), step)]
    run.gen = _chunk_tasks(run, params)


def _chunk_tasks(run: _SlideRun, params: TileParams) -> Iterator[_Work]:
    zarr_images = str(run.writer.images_path) if params.fmt == "zarr" else None
    for a, b in run.chunks:
        if run.error:
            return
        sub = replace(run.plan, coords=run.plan.coords[a:b], tissue_fraction=run.plan.tissue_fraction[a:b])
        task = ChunkTask(
            str(run.job.path), params.reader, run.job.mpp, sub, a, zarr_images, run.writer.shard, run.job.fallback_mpp
        )
        yield _Work(run, read_chunk, task, f"reading patches {a}-{b - 1}")


def _finish(run: _SlideRun) -> ManifestRow:
    """Close (or throw away) the slide's store and fill in its manifest row."""
    run.finished = True
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
        run.row = _row(run.job, "failed", error=run.error)
    run.row.seconds = time.perf_counter() - run.t0
    return run.row


# ---------------------------------------------------------------------------------------------- the pool


class _InlineExecutor:
    """workers=0: run every task in this process, through the same code path as the pool."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None


class _Pool:
    """A ProcessPoolExecutor that can be rebuilt after a worker died, and says how that worker died."""

    def __init__(self, workers: int):
        self.workers = workers
        self.restarts = 0  # since the last task that came back
        self._processes: dict = {}
        self._start()

    def _start(self) -> None:
        if self.workers == 0:
            self.executor = _InlineExecutor()
            return
        # OpenSlide handles are not fork-safe: workers start clean (forkserver on Linux, spawn elsewhere).
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self.executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context(method))
        for _ in range(self.workers):  # start the workers (and their imports) now
            self.executor.submit(_warm_up)
        self._processes = dict(getattr(self.executor, "_processes", None) or {})

    def submit(self, fn, arg) -> Future:
        return self.executor.submit(fn, arg)

    def death(self) -> str:
        """How the dead worker ended: 'was killed by SIGKILL (out of memory?)', 'exited with status 3', ..."""
        processes = self._processes | dict(getattr(self.executor, "_processes", None) or {})
        codes = [p.exitcode for p in processes.values() if p.exitcode not in (None, 0, -signal.SIGTERM)]
        if not codes:
            return "died"
        code = codes[0]
        if code > 0:
            return f"exited with status {code}"
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        hint = {signal.SIGKILL: " (out of memory?)", signal.SIGSEGV: " (a crash in native code)"}.get(-code, "")
        return f"was killed by {name}{hint}"

    def restart(self) -> None:
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise PathgenError(f"worker processes died {self.restarts} times in a row without finishing a task")
        self.executor.shutdown(wait=True, cancel_futures=True)  # waits for the old workers to be gone
        self._start()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


MAX_RESTARTS = 20  # rebuilds of the pool in a row, no task coming back in between: workers cannot even start


def _warm_up() -> None:
    import pathgen.slide.planning  # noqa: F401  (openslide, PIL, numpy, scikit-image)


# ---------------------------------------------------------------------------------------------- cohort


class _Scheduler:
    """Feeds plan and chunk tasks of all slides to the pool, in cohort order, and handles what comes back.

    At most 2 x workers tasks are in flight (each chunk holds one shard of pixels) and at most max(2, workers)
    slides are being planned or have chunks left to submit. After a worker died, the tasks that were in flight are
    re-run one at a time, and normal feeding resumes only when all of them are through.
    """

    def __init__(self, jobs, out_dir: Path, params: TileParams, workers: int, overwrite: bool, on_row, bar):
        self.pending = deque(jobs)
        self.out_dir, self.params, self.overwrite, self.on_row, self.bar = out_dir, params, overwrite, on_row, bar
        self.pool = _Pool(workers)
        self.limit = 2 * max(1, workers)
        self.lookahead = max(2, workers)
        self.planning = 0  # slides whose plan task is out
        self.active: deque[_SlideRun] = deque()  # planned slides with chunks left to submit
        self.retry: deque[_Work] = deque()
        self.in_flight: dict[Future, _Work] = {}
        self.done_slides = 0
        self.total = len(jobs)

    def run(self) -> None:
        try:
            while True:
                while len(self.in_flight) < self.limit and (work := self._next()) is not None:
                    self._submit(work)
                if not self.in_flight:
                    if self.retry or self.pending or self.active:
                        continue
                    return
                done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
                crashed = []
                for future in done:
                    work = self.in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        crashed.append(work)
                        continue
                    except Exception as err:  # noqa: BLE001 - e.g. a result that cannot be unpickled
                        result = ("error", _one_line(err)) if work.fn is plan_task else ("error", 0, _one_line(err))
                    self.pool.restarts = 0
                    self._handle(work, result)
                if crashed:
                    self._crashed(crashed)
        finally:
            self.pool.close()

    # -- feeding

    def _next(self) -> _Work | None:
        if self.retry or any(w.retried for w in self.in_flight.values()):
            # Re-running the suspects of a crash, alone, so that a second crash names its culprit.
            while self.retry and not self.in_flight:
                work = self.retry.popleft()
                if not work.run.error:
                    return work
                self._drop(work)  # its slide failed meanwhile
            return None
        while self.pending and self.planning + len(self.active) < self.lookahead:
            run = _start(self.pending.popleft(), self.out_dir, self.params, self.overwrite)
            if run.submitted_all:  # skipped, or failed before planning
                self._finish(run)
                continue
            self.planning += 1
            task = PlanTask(run.job, self.params, str(self.out_dir / "qc"))
            return _Work(run, plan_task, task, "planning the slide")
        while self.active:
            run = self.active[0]
            work = next(run.gen, None)
            if work is not None:
                return work
            self.active.popleft()
            run.submitted_all = True
            self._maybe_finish(run)
        return None

    def _submit(self, work: _Work) -> None:
        if not work.counted:
            work.run.outstanding += 1
            work.counted = True
        try:
            future = self.pool.submit(work.fn, work.arg)
        except BrokenProcessPool:  # the pool broke since the last wait(): this task never ran; try it again later
            self.retry.appendleft(work)
            if not self.in_flight:  # else the broken futures come back from wait() and the pool is rebuilt then
                self.pool.restart()
            return
        self.in_flight[future] = work

    # -- results

    def _handle(self, work: _Work, result) -> None:
        run = work.run
        run.outstanding -= 1
        if work.fn is plan_task:
            self.planning -= 1
            status, payload = result
            if status == "error":
                run.error = run.error or payload
            elif not run.error:
                try:
                    _planned(run, payload, self.params)
                    for notice in payload.notices:
                        self.bar.write(notice, file=sys.stderr)
                    self.active.append(run)
                except Exception as err:  # noqa: BLE001 - e.g. the output disk is full
                    run.error = _one_line(err)
            if run.error or not run.chunks:
                run.submitted_all = True
                if run in self.active:
                    self.active.remove(run)
        else:
            status, start, payload = result
            if status == "error":
                run.error = run.error or payload
            elif not run.error:
                try:
                    if isinstance(payload, np.ndarray):
                        run.writer.write(start, payload)
                    else:
                        run.writer.mark_written(start, payload)
                except Exception as err:  # noqa: BLE001
                    run.error = _one_line(err)
                self.bar.update(payload if isinstance(payload, int) else len(payload))
            if run.error and run in self.active:  # stop feeding a failed slide
                self.active.remove(run)
                run.submitted_all = True
        self._maybe_finish(run)

    def _crashed(self, crashed: list[_Work]) -> None:
        """A worker died: every task in flight is a suspect; retry each once, alone, with a fresh pool."""
        suspects = crashed + list(self.in_flight.values())
        self.in_flight.clear()
        death = self.pool.death()
        self.pool.restart()
        for work in suspects:
            if work.retried and not work.run.error:
                work.run.error = f"worker process {death} while {work.what}, twice"
            if work.run.error:
                self._drop(work)
            else:
                work.retried = True
                self.retry.append(work)
        self.bar.write(f"warning: a worker process {death}; retrying {len(self.retry)} task(s) one at a time",
                       file=sys.stderr)  # fmt: skip

    # -- finishing

    def _drop(self, work: _Work) -> None:
        """Give up a task whose slide has failed; none of that slide's other chunks are fed any more."""
        run = work.run
        run.outstanding -= 1
        if work.fn is plan_task:
            self.planning -= 1
        if run in self.active:
            self.active.remove(run)
        run.submitted_all = True
        self._maybe_finish(run)

    def _maybe_finish(self, run: _SlideRun) -> None:
        if run.submitted_all and run.outstanding == 0 and not run.finished:
            self._finish(run)

    def _finish(self, run: _SlideRun) -> None:
        row = _finish(run)
        self.done_slides += 1
        self.on_row(row)
        rate = f" ({row.n_patches / row.seconds:.0f} patches/s)" if row.status == "ok" and row.seconds > 0 else ""
        what = {"ok": f"{row.n_patches} patches in {row.seconds:.1f} s{rate}", "skipped": "already tiled",
                "failed": row.error}[row.status]  # fmt: skip
        self.bar.write(f"{run.job.name}: {row.status}: {what} [{self.done_slides}/{self.total}]", file=sys.stderr)
        self.bar.set_postfix_str(f"slides {self.done_slides}/{self.total}", refresh=False)


def _run(jobs: Sequence[SlideJob], out_dir: Path, params: TileParams, workers: int, overwrite: bool, on_row):
    """Tile `jobs`, calling on_row(row) as each slide finishes (in completion order)."""
    from pathgen.runtime.progress import progress_bar

    try:
        with progress_bar(desc="tile", unit="patch", file=sys.stderr) as bar:
            _Scheduler(jobs, out_dir, params, workers, overwrite, on_row, bar).run()
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
    reader: str = "openslide",
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
    out_dir = Path(out_dir)
    jobs = [j for j in list_slides(slides, slide_mpp, out_dir) if shard_of(j, count) == index]
    out_dir.mkdir(parents=True, exist_ok=True)
    roi = str(Path(roi).resolve()) if roi is not None else None
    params = TileParams(mpp, patch_size, fmt, tissue_threshold, coords_only, reader, magnification, overlap, roi)

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
