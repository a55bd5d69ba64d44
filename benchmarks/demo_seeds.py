"""The demo task over seeds: kNN top-1 of the ViT at random init vs after DINO, per seed of the whole chain.

For each seed, `pathgen run pipelines/demo.yaml --until ssl` with that seed for the cohort and the DINO run, the
labelled patches of the pipeline's `labelled` step with that seed, then `pathgen.eval.compare.compare_encoders`
(kNN k = 20, as the demo's compare step) of the DINO encoder against its architecture at random init (whose
weights that seed also draws), each seed in its own run folder (a rerun reuses finished steps). Prints one row per
seed (random, dino, difference, wall seconds, CPU seconds of the pipeline runs) and the mean difference; the demo's
target is DINO >= random + 10 points on every seed.

    python benchmarks/demo_seeds.py --out /tmp/demo_seeds            # seeds 0 1 2
    python benchmarks/demo_seeds.py --seeds 3 4 -- ssl:optim.epochs=8  # extra overrides after --
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_seed(seed: int, out: Path, extra: list[str]) -> dict:
    import yaml

    from pathgen.eval.compare import compare_encoders
    from pathgen.pipeline.demo_patches import make_demo_patches

    overrides = [f"cohort.seed={seed}", f"labelled.seed={seed}", f"ssl:run.seed={seed}", *extra]
    base = [sys.executable, "-m", "pathgen", "run", str(ROOT / "pipelines" / "demo.yaml"), "--out", str(out)]
    t0, c0 = time.perf_counter(), children_cpu()
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        if subprocess.run([*base, "--until", "ssl", *overrides], stdout=f, stderr=subprocess.STDOUT,
                          cwd=ROOT).returncode:
            raise SystemExit(f"seed {seed}: the pipeline failed, see {log}")
    # The labelled step comes after Gen-DINO in the pipeline, which `--only` would need finished: make its
    # patches here, with the pipeline's own settings for that step and this seed.
    labelled = out / "labelled" / "patches"
    if not (labelled / "ground_truth.csv").exists():
        settings = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())["steps"]["labelled"]["with"]
        make_demo_patches(labelled, **{**settings, "seed": seed})
    encoder = str(out / "ssl" / "encoder.safetensors")
    table = compare_encoders([f"random:{encoder}", encoder], [labelled / "train"], [labelled / "test"], k=20,
                             seed=seed, progress=False)
    random, dino = (100 * row["knn_top1"] for row in table["rows"])
    return {"seed": seed, "random": random, "dino": dino, "n_test": table["rows"][0]["n_test"],
            "wall_s": time.perf_counter() - t0, "cpu_s": children_cpu() - c0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pathgen-demo-seeds"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("extra", nargs="*", help="more pipeline overrides (after --)")
    args = parser.parse_args()
    rows = []
    print(f"{'seed':>4} {'random %':>9} {'dino %':>8} {'diff':>6} {'n_test':>6} {'wall s':>7} {'CPU s':>7}")
    for seed in args.seeds:
        r = run_seed(seed, args.out / f"seed_{seed}", args.extra)
        rows.append(r)
        print(f"{seed:>4} {r['random']:>9.1f} {r['dino']:>8.1f} {r['dino'] - r['random']:>+6.1f} {r['n_test']:>6}"
              f" {r['wall_s']:>7.0f} {r['cpu_s']:>7.0f}", flush=True)
    diffs = [r["dino"] - r["random"] for r in rows]
    print(f"mean difference {sum(diffs) / len(diffs):+.1f} points, smallest {min(diffs):+.1f}"
          f" (target: >= +10 on every seed)")
    (args.out / "demo_seeds.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
