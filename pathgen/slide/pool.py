"""A process pool that survives its workers: rebuilt after one died, and able to say how it died."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from pathgen.errors import PathgenError

MAX_RESTARTS = 20  # rebuilds in a row with no task coming back in between: workers cannot even start


class InlineExecutor:
    """workers=0: run every task in this process, through the same code path as the pool."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None


class WorkerPool:
    """`workers` processes (none for 0) started clean, each running `warm_up` first.

    OpenSlide handles are not fork-safe, so workers start from a forkserver (spawn where there is none).
    `preload`: modules the forkserver imports once, before it forks any worker (it never opens a slide), so that
    workers start with them loaded instead of each importing them; no effect where the forkserver already runs.
    """

    def __init__(self, workers: int, warm_up: Callable[[], None] | None = None, preload: Sequence[str] = ()):
        self.workers, self.warm_up, self.preload = workers, warm_up, list(preload)
        self.restarts = 0  # since the last task that came back; the caller resets it
        self._processes: dict = {}
        self._start()

    def _start(self) -> None:
        if self.workers == 0:
            self.executor = InlineExecutor()
            return
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver" and self.preload:
            context.set_forkserver_preload(self.preload)
        self.executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        if self.warm_up is not None:
            for _ in range(self.workers):  # start the workers (and their imports) now
                self.executor.submit(self.warm_up)
        self._processes = dict(getattr(self.executor, "_processes", None) or {})

    def submit(self, fn, arg) -> Future:
        return self.executor.submit(fn, arg)

    def death(self) -> str:
        """How the dead worker ended: 'was killed by SIGKILL (out of memory?)', 'exited with status 3', ..."""
        processes = self._processes | dict(getattr(self.executor, "_processes", None) or {})
        # The pool terminates the other workers (SIGTERM) once one has died; the culprit is the other one.
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
