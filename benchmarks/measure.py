"""One benchmark side as a fresh subprocess, measured over its whole process tree (the workers included).

    m = run_measured([sys.executable, "-c", code, *args])            # memory: summed RSS
    m = run_measured(cmd, memory="pss", interval=0.05)               # shared pages (torch) counted once
    m.seconds, m.peak_gib, m.cpu_seconds, m.last_json()

The tree's processes are sampled every `interval` seconds; each counts with the last CPU time seen for it. The tree
itself is listed again only every TREE_EVERY seconds: psutil finds children by reading every process on the
machine (~3 ms for ~80 processes), which every 20 ms took ~16% of a core away from a side whose workers kept both
cores busy (and none from a 1-worker side, which leaves a core idle). A process that lives less than TREE_EVERY
may be missed. Output goes to temporary files, not pipes, so a chatty side cannot block on a full pipe while it
is being sampled.
"""

import json
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple


class Measured(NamedTuple):
    seconds: float  # wall clock, start-up included
    peak_gib: float  # peak memory of the tree: summed RSS, or summed PSS
    cpu_seconds: float  # user + system of every process of the tree
    stdout: str

    def last_json(self) -> dict:
        """The side's result: the JSON object on the last line it printed."""
        return json.loads(self.stdout.strip().splitlines()[-1])


TREE_EVERY = 0.25  # seconds between listings of the process tree


def _sample(process, memory: str) -> tuple[float, int]:
    """CPU seconds and memory of one process; psutil.Error if it has ended."""
    times = process.cpu_times()
    # PSS: pages the workers share with the main process count once, not once per process.
    mem = process.memory_full_info().pss if memory == "pss" else process.memory_info().rss
    return times.user + times.system, mem


def run_measured(cmd: list[str], memory: str = "rss", interval: float = 0.02) -> Measured:
    """Run `cmd` to its end; exits with its stderr's tail if it fails."""
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        root, peak, cpu, tree, listed = psutil.Process(proc.pid), 0, {}, [], -TREE_EVERY
        while proc.poll() is None:
            if time.perf_counter() - listed >= TREE_EVERY:
                try:
                    tree, listed = [root, *root.children(recursive=True)], time.perf_counter()
                except psutil.Error:  # the root ended meanwhile
                    pass
            total = 0
            for p in tree:
                try:
                    cpu[p.pid], mem = _sample(p, memory)
                    total += mem
                except psutil.Error:  # it ended since it was listed
                    pass
            peak = max(peak, total)
            time.sleep(interval)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()[-3000:]}")
        return Measured(seconds, peak / 2**30, sum(cpu.values()), out.read().decode())
