"""The cohort scheduler: the plan and chunk tasks of all slides through one worker pool, results into stores.

At most 2 x workers tasks are in flight (each chunk holds one shard of pixels) and at most max(2, workers) slides
are being planned or have chunks left to submit, so workers are busy across slides and within one large slide
alike. A worker that dies breaks the pool: the pool is rebuilt and every task that was in flight is retried once,
alone, so a task that kills its worker again is the culprit and only its slide fails. The task functions and
their argument types come from `tasks` (the pathgen.slide.tiler module), looked up when used.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pathgen.errors import PathgenError, StoreError, one_line
from pathgen.slide.discovery import SlideJob
from pathgen.slide.pool import WorkerPool
from pathgen.store.manifest import ManifestRow
from pathgen.store.reader import open_store
from pathgen.store.writer import FORMATS, PatchStoreWriter, remove_stale_temps


def is_up_to_date(store_path: Path, job: SlideJob, params) -> int | None:
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
        "reader_requested": params.reader,
        "mpp_override": job.mpp,
        "roi_path": None,
        "roi_mtime": None,
    }
    if params.mpp is not None:
        wanted["target_mpp"] = float(params.mpp)
    if not params.coords_only:
        wanted.update(params.patch_codec.attrs)
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
    pictures: object = None  # planning.Pictures still to draw; the slide finishes after them


@dataclass
class _Work:
    """One task for the pool, and what to say about it if it kills its worker."""

    run: _SlideRun
    fn: Callable
    arg: object
    what: str
    kind: str = "chunk"  # or "plan"
    retried: bool = False
    counted: bool = False  # in its slide's `outstanding`


def _start(job: SlideJob, out_dir: Path, params, overwrite: bool) -> _SlideRun:
    """A run for `job`; its row is already final when the slide needs no tiling (or cannot even be looked at)."""
    store_path = out_dir / f"{job.name}{FORMATS[params.fmt]}"
    run = _SlideRun(job, _row(job, "ok"), time.perf_counter(), store_path)
    try:
        remove_stale_temps(store_path)
        if not overwrite and (n := is_up_to_date(store_path, job, params)) is not None:
            run.row = _row(job, "skipped", n, store=store_path.name)
            run.submitted_all = True
    except Exception as err:  # noqa: BLE001 - e.g. the slide file vanished
        run.error = one_line(err)
        run.submitted_all = True
    return run


def _row(job: SlideJob, status: str, n: int = 0, error: str = "", store: str = "") -> ManifestRow:
    return ManifestRow(str(job.path), status, n, 0.0, error, store, dict(job.extra))


def _planned(run: _SlideRun, planned, params, tasks) -> None:
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
        codec=params.patch_codec,
    )
    run.plan = plan
    run.row.store = run.store_path.name
    run.row.n_patches = len(plan.coords)
    if not params.coords_only:
        step = run.writer.shard
        run.chunks = [(a, min(a + step, len(plan.coords))) for a in range(0, len(plan.coords), step)]
    run.gen = _chunk_tasks(run, params, tasks)


def _chunk_tasks(run: _SlideRun, params, tasks) -> Iterator[_Work]:
    zarr_images = str(run.writer.images_path) if params.fmt == "zarr" else None
    for a, b in run.chunks:
        if run.error:
            return
        sub = replace(run.plan, coords=run.plan.coords[a:b], tissue_fraction=run.plan.tissue_fraction[a:b])
        task = tasks.ChunkTask(
            str(run.job.path), params.reader, run.job.mpp, sub, a, zarr_images, run.writer.shard, run.job.fallback_mpp,
            params.patch_codec,
        )
        yield _Work(run, tasks.read_chunk, task, f"reading patches {a}-{b - 1}")


def _finish(run: _SlideRun) -> ManifestRow:
    """Close (or throw away) the slide's store and fill in its manifest row."""
    run.finished = True
    if run.row.status == "skipped":
        return run.row
    if not run.error:
        try:
            run.writer.close()
        except Exception as err:  # noqa: BLE001
            run.error = one_line(err)
    if run.error:
        if run.writer is not None:
            run.writer.abort()
        run.row = _row(run.job, "failed", error=run.error)
    run.row.seconds = time.perf_counter() - run.t0
    return run.row


class _Scheduler:
    """Feeds plan and chunk tasks of all slides to the pool, in cohort order, and handles what comes back.

    At most 2 x workers tasks are in flight (each chunk holds one shard of pixels) and at most max(2, workers)
    slides are being planned or have chunks left to submit. After a worker died, the tasks that were in flight are
    re-run one at a time, and normal feeding resumes only when all of them are through.
    """

    def __init__(self, jobs, out_dir: Path, params, workers: int, overwrite: bool, on_row, bar, tasks):
        self.pending = deque(jobs)
        self.out_dir, self.params, self.overwrite, self.on_row, self.bar = out_dir, params, overwrite, on_row, bar
        self.pool = WorkerPool(workers, tasks.warm_up, tasks.FORKSERVER_PRELOAD)
        self.tasks = tasks
        self.limit = 2 * max(1, workers)
        self.lookahead = max(2, workers)
        self.planning = 0  # slides whose plan task is out
        self.active: deque[_SlideRun] = deque()  # planned slides with chunks left to submit
        self.retry: deque[_Work] = deque()
        self.in_flight: dict[Future, _Work] = {}
        self.pictures: deque[_SlideRun] = deque()  # planned slides whose QC pictures are still to draw
        self.done_slides = 0
        self.total = len(jobs)

    def run(self) -> None:
        warmed = False
        try:
            while True:
                while len(self.in_flight) < self.limit and (work := self._next()) is not None:
                    self._submit(work)
                if not warmed and self.in_flight:  # the first plans are out: the parent imports meanwhile
                    self.tasks.warm_up_parent(self.params.fmt)
                    warmed = True
                self._draw_pictures()  # while the workers read: pictures are off the slides' critical path
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
                        result = ("error", one_line(err)) if work.kind == "plan" else ("error", 0, one_line(err))
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
            task = self.tasks.PlanTask(run.job, self.params, str(self.out_dir / "qc"))
            return _Work(run, self.tasks.plan_task, task, "planning the slide", "plan")
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
        if work.kind == "plan":
            self.planning -= 1
            status, payload = result
            if status == "error":
                run.error = run.error or payload
            elif not run.error:
                try:
                    _planned(run, payload, self.params, self.tasks)
                    for notice in payload.notices:
                        self.bar.write(notice, file=sys.stderr)
                    self.active.append(run)
                    run.pictures = payload.pictures
                    self.pictures.append(run)
                except Exception as err:  # noqa: BLE001 - e.g. the output disk is full
                    run.error = one_line(err)
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
                    elif isinstance(payload, list):  # HDF5, patches encoded by the worker
                        run.writer.write_encoded(start, payload)
                    else:
                        run.writer.mark_written(start, payload, sync=True)
                except Exception as err:  # noqa: BLE001
                    run.error = one_line(err)
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

    def _draw_pictures(self) -> None:
        from pathgen.slide.planning import write_pictures

        while self.pictures:
            run = self.pictures.popleft()
            try:
                if not run.error:
                    write_pictures(run.pictures, run.plan)
            except Exception as err:  # noqa: BLE001 - e.g. the output disk is full: this slide fails
                run.error = run.error or one_line(err)
            run.pictures = None
            self._maybe_finish(run)

    # -- finishing

    def _drop(self, work: _Work) -> None:
        """Give up a task whose slide has failed; none of that slide's other chunks are fed any more."""
        run = work.run
        run.outstanding -= 1
        if work.kind == "plan":
            self.planning -= 1
        if run in self.active:
            self.active.remove(run)
        run.submitted_all = True
        self._maybe_finish(run)

    def _maybe_finish(self, run: _SlideRun) -> None:
        if run.submitted_all and run.outstanding == 0 and not run.finished and run.pictures is None:
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


def run_cohort(jobs, out_dir: Path, params, workers: int, overwrite: bool, on_row, tasks) -> None:
    """Tile `jobs` with `tasks`' functions, calling on_row(row) as each slide finishes (in completion order)."""
    from pathgen.runtime.progress import progress_bar

    with progress_bar(desc="tile", unit="patch", file=sys.stderr) as bar:
        _Scheduler(jobs, out_dir, params, workers, overwrite, on_row, bar, tasks).run()
