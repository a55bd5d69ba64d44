"""One benchmark side as a fresh subprocess, measured over its whole process tree (the workers included).

    m = run_measured([sys.executable, "-c", code, *args])            # memory: summed RSS
    m = run_measured(cmd, memory="pss", interval=0.05)               # shared pages (torch) counted once
    m.seconds, m.peak_gib, m.cpu_seconds, m.last_json()

The tree is sampled every `interval` seconds; each process counts with the last CPU time seen for it. Output goes
to temporary files, not pipes, so a chatty side cannot block on a full pipe while it is being sampled.
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


def _tree_memory(processes, memory: str) -> int:
    if memory == "pss":  # pages the workers share with the main process count once, not once per process
        return sum(p.memory_full_info().pss for p in processes if p.is_running())
    return sum(p.memory_info().rss for p in processes)


def run_measured(cmd: list[str], memory: str = "rss", interval: float = 0.02) -> Measured:
    """Run `cmd` to its end; exits with its stderr's tail if it fails."""
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        root, peak, cpu = psutil.Process(proc.pid), 0, {}
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                for p in tree:
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
                peak = max(peak, _tree_memory(tree, memory))
            except psutil.Error:  # a process ended between listing and reading it
                pass
            time.sleep(interval)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()[-3000:]}")
        return Measured(seconds, peak / 2**30, sum(cpu.values()), out.read().decode())
