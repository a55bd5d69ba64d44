"""`pathgen tile` from two checkouts, side by side: this one and another (e.g. main), interleaved rounds.

    python benchmarks/bench_tile_vs.py /path/to/other/checkout SLIDE [--rounds 5] [--workers 1 2]

Each run is a fresh `pathgen tile --mpp 0.25 --patch-size 256` subprocess with PYTHONPATH set to one checkout,
timed and CPU-metered over its whole process tree (measure.run_measured); the order alternates every round.
Prints medians and the ratios this / other in patches/s and in CPU-s per patch.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_measured  # noqa: E402

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path, help="the other checkout (its pathgen/ is imported)")
    ap.add_argument("slide", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    trees = {"this": HERE, "other": args.other.resolve()}
    results: dict[tuple[str, int], list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for workers in args.workers:
                for name in ("this", "other") if r % 2 == 0 else ("other", "this"):
                    out = Path(tmp) / f"{name}_{workers}"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = ["env", f"PYTHONPATH={trees[name]}", "OMP_NUM_THREADS=1", sys.executable, "-c",
                           "from pathgen.cli import app; app()", "tile", str(args.slide), "--out", str(out),
                           "--mpp", "0.25", "--patch-size", "256", "-j", str(workers)]  # fmt: skip
                    wall, _, cpu, _ = run_measured(cmd)
                    n = int((out / "manifest.csv").read_text().splitlines()[1].split(",")[2])
                    results.setdefault((name, workers), []).append((wall, cpu, n))
                    subprocess.run(["sync"], check=False)
                    print(f"round {r}  {name:5s} -j{workers}  {wall:6.1f} s  {cpu:6.1f} CPU-s  {n} patches", flush=True)
    for workers in args.workers:
        med = {k: np.median(np.array(results[(k, workers)])[:, :2], axis=0) for k in trees}
        n = {k: results[(k, workers)][0][2] for k in trees}
        rate = (n["this"] / med["this"][0]) / (n["other"] / med["other"][0])
        cpu = (med["this"][1] / n["this"]) / (med["other"][1] / n["other"])
        print(f"-j{workers}: this {med['this'][0]:.1f} s, {med['this'][1]:.1f} CPU-s, {n['this']} patches; other "
              f"{med['other'][0]:.1f} s, {med['other'][1]:.1f} CPU-s, {n['other']} patches; this/other: "
              f"{rate:.2f}x patches/s, {cpu:.2f}x CPU-s per patch")


if __name__ == "__main__":
    main()
