"""Tiling throughput, parallel speed-up, peak memory and store size, measured side by side in one run.

    python benchmarks/bench_tile.py                          # 40,000 x 30,000 px 40x slide (several minutes)
    python benchmarks/bench_tile.py --width 12000 --height 9000   # quicker

Every measured run is a fresh subprocess, timed wall-clock from start to exit (interpreter start-up and imports
included on both sides), with the peak resident memory of its whole process tree sampled every 20 ms:
  bare      a plain openslide-python `read_region` loop over the same level-0 coordinates `pathgen tile` keeps
  tile -j1  `pathgen tile --mpp 0.25 --patch-size 256 --workers 1` with images stored (Zarr)
  tile -j2  the same with `--workers 2`
The memory runs repeat `tile -j1` on a slide half as wide and high, to show peak RSS does not grow with size.
Synthetic slides are written once with pathgen.pipeline.demo_cohort.make_large_slide and cached.
"""

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

TILE_ARGS = ["--mpp", "0.25", "--patch-size", "256"]


def cached_slide(cache: Path, width: int, height: int) -> Path:
    from pathgen.pipeline.demo_cohort import make_large_slide

    path = cache / f"large_{width}x{height}_s0.svs"
    if not path.exists():
        print(f"writing {path.name} (once; cached in {cache}) ...", flush=True)
        t0 = time.perf_counter()
        part = path.with_name(path.name + ".part")
        make_large_slide(part, width, height, seed=0)
        os.replace(part, path)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def run_measured(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS GiB summed over the process tree, CPU seconds of the tree) for one command.

    The tree is sampled every 20 ms; each process counts with the last CPU time seen for it.
    """
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak, cpu = psutil.Process(proc.pid), 0, {}
    while proc.poll() is None:
        try:
            rss = 0
            for p in [root, *root.children(recursive=True)]:
                with p.oneshot():
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
            peak = max(peak, rss)
        except psutil.Error:  # a process ended between listing and reading it
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return seconds, peak / 2**30, sum(cpu.values())


def _over_rounds(results: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Median wall seconds, largest peak RSS, median CPU seconds over the rounds of one run."""
    wall, rss, cpu = zip(*results, strict=True)
    return float(np.median(wall)), max(rss), float(np.median(cpu))


def tile_cmd(slide: Path, out: Path, workers: int, *extra: str) -> list[str]:
    code = "from pathgen.cli import app; app()"
    return [sys.executable, "-c", code, "tile", str(slide), "--out", str(out), *TILE_ARGS, "-j", str(workers), *extra]


BARE_LOOP = textwrap.dedent(
    """
    import sys, numpy as np, openslide
    coords = np.load(sys.argv[2])
    with openslide.OpenSlide(sys.argv[1]) as slide:
        for x, y in coords:
            slide.read_region((int(x), int(y)), 0, (256, 256))
    """
)
# The same loop through pathgen's Slide (RGBA -> RGB over white as numpy): splits tile's overhead into reader + store.
READER_LOOP = BARE_LOOP.replace("openslide.OpenSlide(", "open_slide(").replace(
    "import sys, numpy as np, openslide", "import sys, numpy as np\nfrom pathgen.slide import open_slide"
)


def store_sizes(store: Path, n_sample: int = 200) -> tuple[float, float]:
    """(store bytes per patch, mean JPEG q90 bytes per patch over a sample of stored patches)."""
    from PIL import Image

    from pathgen.store import open_store

    total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    with open_store(store) as s:
        n = len(s)
        idx = np.random.default_rng(0).choice(n, min(n_sample, n), replace=False)
        jpeg = []
        for patch in s.read(idx):
            buf = io.BytesIO()
            Image.fromarray(patch).save(buf, "JPEG", quality=90)
            jpeg.append(buf.tell())
    return total / n, float(np.mean(jpeg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=40000)
    parser.add_argument("--height", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; medians are reported")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pathgen-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    big = cached_slide(args.cache, args.width, args.height)
    small = cached_slide(args.cache, args.width // 2, args.height // 2)

    from pathgen.store import open_store

    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        tmp = Path(tmp)
        # Coordinates first (this also warms the page cache for every run after it).
        run_measured(tile_cmd(big, tmp / "coords", 1, "--coords-only"))
        with open_store(tmp / "coords" / f"{big.stem}.zarr") as s:
            coords, n = s.coords, len(s)
        np.save(tmp / "coords.npy", coords)

        runs = {
            "bare": [sys.executable, "-c", BARE_LOOP, str(big), str(tmp / "coords.npy")],
            "reader": [sys.executable, "-c", READER_LOOP, str(big), str(tmp / "coords.npy")],
            "j1": tile_cmd(big, tmp / "j1", 1),
            "j2": tile_cmd(big, tmp / "j2", 2),
        }
        # Each tile run first deletes the store its previous run wrote, so every timed run writes its ~1.6 GB into
        # page-cache memory the kernel has just freed. One untimed run of each fills the memory first: on a VM, the
        # first touch of never-used guest memory is slow (here ~3 s more for whichever run wrote first).
        for name in ("j1", "j2"):
            run_measured(runs[name])
        os.sync()
        # Rounds interleave the runs (A B C D A B C D ...) so that background load hits them alike; medians.
        times: dict[str, list] = {k: [] for k in runs}
        for r in range(args.rounds):
            for name, cmd in runs.items():
                if name in ("j1", "j2"):
                    shutil.rmtree(tmp / name)
                times[name].append(run_measured(cmd))
                os.sync()  # flush this run's ~1.6 GB now, so the kernel's writeback does not eat into the next run
                print(f"  round {r + 1}: {name:<7}{times[name][-1][0]:7.1f} s", flush=True)
        med = {k: _over_rounds(v) for k, v in times.items()}
        (bare_s, _, bare_cpu), (reader_s, _, reader_cpu), (one_s, one_rss, one_cpu), (two_s, two_rss, _) = med.values()
        small_s, small_rss, _ = run_measured(tile_cmd(small, tmp / "small", 1))
        with open_store(tmp / "j1" / f"{big.stem}.zarr") as a, open_store(tmp / "j2" / f"{big.stem}.zarr") as b:
            assert len(a) == len(b) == n and (a.coords == b.coords).all()
        store_bpp, jpeg_bpp = store_sizes(tmp / "j1" / f"{big.stem}.zarr")
        n_files = sum(1 for p in (tmp / "j1" / f"{big.stem}.zarr").rglob("*") if p.is_file())

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nslide {args.width} x {args.height} px at 0.25 mpp (40x), {n} tissue patches of 256 px, {cores} cores,")
    print(f"median of {args.rounds} interleaved round(s); load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'run':<34}{'seconds':>9}{'patches/s':>11}{'CPU s':>8}{'peak RSS GiB':>14}")
    names = ["bare openslide read_region loop", "pathgen Slide.read_region loop", "pathgen tile, 1 worker"]
    for name, (secs, rss, cpu_s) in zip([*names, "pathgen tile, 2 workers"], med.values(), strict=True):
        print(f"{name:<34}{secs:>9.1f}{n / secs:>11.1f}{cpu_s:>8.1f}{rss:>14.2f}")
    print(f"{'pathgen tile, 1 worker, 1/4 area':<34}{small_s:>9.1f}{'':>19}{small_rss:>14.2f}")
    print(f"\n1 worker vs bare loop:   {bare_s / one_s:.2f}x (target >= 0.7x); CPU seconds {bare_cpu / one_cpu:.2f}x")
    print(f"pathgen reader vs bare:  {bare_s / reader_s:.2f}x; in CPU seconds {bare_cpu / reader_cpu:.2f}x")
    print(f"2 workers vs 1 worker:   {one_s / two_s:.2f}x  (target >= 1.7x)")
    two_cpu = med["j2"][2]
    print(f"cores kept busy:         {one_cpu / one_s:.2f} (1 worker), {two_cpu / two_s:.2f} (2 workers), CPU s/wall s")
    print(f"peak RSS, 1 worker:      {one_rss:.2f} GiB full slide vs {small_rss:.2f} GiB quarter-area slide (< 1.5)")
    print(f"peak RSS, 2 workers:     {two_rss:.2f} GiB (parent + workers)")
    print(
        f"store bytes/patch:       {store_bpp / 1024:.1f} KiB lossless Zarr ({n_files} files) vs "
        f"{jpeg_bpp / 1024:.1f} KiB JPEG q90 vs {256 * 256 * 3 / 1024:.0f} KiB raw"
    )


if __name__ == "__main__":
    main()
