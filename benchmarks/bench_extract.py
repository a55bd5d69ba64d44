"""`pathgen extract-features`: end-to-end throughput against the bare forward pass, and one pass vs two runs.

Measured side by side in one run, in interleaved rounds (median), on patch stores tiled from the synthetic demo
cohort (cached in $TMPDIR/pathgen-bench-features):

1. end to end vs bare forward: `extract_features` (read + decode in DataLoader workers, preprocess, forward,
   write h5) against the same encoder's forward pass alone on the same patches, preprocessed beforehand and held
   in memory, in the same batches (per slide, --batch-size). Target >= 0.85x on the CPU.
2. two encoders in one pass vs two separate runs: `extract_features([A, B])` against `extract_features([A])`
   then `extract_features([B])`, with small encoders so that reading and decoding are a sizeable share.
   Target >= 1.3x faster.

    python benchmarks/bench_extract.py
    python benchmarks/bench_extract.py --only one-pass --small timm:resnet18 timm:mobilenetv3_small_100
    python benchmarks/bench_extract.py --rounds 5 --workers 2 --encoder timm:vit_small_patch16_224
"""

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch


def prepare(work: Path, n_slides: int, patch_size: int, mpp: float) -> Path:
    from pathgen.pipeline.demo_cohort import make_demo_cohort
    from pathgen.slide.tiler import tile_cohort

    work = work / f"{n_slides}slides_{patch_size}px_{mpp}mpp"  # one cache per cohort, so a flag never reuses another
    labels = work / "cohort" / "labels.csv"
    if not labels.exists():
        make_demo_cohort(work / "cohort", n_slides=n_slides)
    return tile_cohort(labels, work / "stores", mpp=mpp, patch_size=patch_size, workers=2)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the DataLoader workers, once they exit)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bare_forward(spec: str, manifest: Path, batch_size: int, img_size: int | None) -> tuple[float, int, float]:
    """Seconds of the encoder's forward alone over every patch, preprocessed up front, in extraction's batches."""
    from pathgen.features.encoders import load_feature_encoder
    from pathgen.features.patches import SlidePatches, SlideSource, slide_batches
    from pathgen.store import find_stores, open_store

    enc = load_feature_encoder(spec, img_size=img_size)
    sources = []
    for path in find_stores(manifest):
        with open_store(path) as store:
            sources.append(SlideSource(path.stem, path, len(store), ("x",)))
    data = SlidePatches(sources, {"x": enc.transform})  # the encoder's whole preprocessing, done up front
    batches = [torch.stack([data[i][0]["x"] for i in b]) for b in slide_batches(sources, batch_size)]
    with torch.inference_mode():
        t0, c0 = time.perf_counter(), cpu_seconds()
        for x in batches:
            enc.model(x)
        return time.perf_counter() - t0, sum(len(x) for x in batches), cpu_seconds() - c0


def extract(specs: list[str], manifest: Path, out: Path, batch_size: int, workers: int, img_size: int | None):
    from pathgen.features.extract import extract_features

    t0, c0 = time.perf_counter(), cpu_seconds()
    result = extract_features(specs, [manifest], out, batch_size=batch_size, workers=workers, img_size=img_size,
                              overwrite=True, progress=False, device="cpu")
    assert not result.failed, result.failed
    return time.perf_counter() - t0, dict(result.timing, cpu_s=cpu_seconds() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pathgen-bench-features")
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--patch-size", type=int, default=224)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--encoder", default="timm:vit_small_patch16_224")
    # timm's test models: a forward costs about what reading and decoding a patch does on the CPU, as a ViT-S
    # forward does on a GPU, which is where decoding is a sizeable share (resnet18 + mobilenetv3: ~30%)
    ap.add_argument("--small", nargs=2, default=["timm:test_resnet", "timm:test_vit"],
                    help="the two encoders of the one-pass comparison")
    ap.add_argument("--small-size", type=int, default=32, help="input size of the two small encoders")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("end-to-end", "one-pass"), help="run one of the two comparisons")
    args = ap.parse_args()
    e2e_on, one_on = args.only in (None, "end-to-end"), args.only in (None, "one-pass")

    manifest = prepare(args.work, args.slides, args.patch_size, args.mpp)
    out = manifest.parent.parent / "out"
    print(f"stores: {manifest}; torch threads {torch.get_num_threads()}, {args.workers} DataLoader worker(s)")

    e2e, bare, one, two, timings, cpu = [], [], [], [], [], {"bare": [], "e2e": [], "one": [], "two": []}
    for r in range(args.rounds + 1):  # round 0 warms caches and imports, untimed
        if e2e_on:
            s_bare, n, c_bare = bare_forward(args.encoder, manifest, args.batch_size, None)
            s_e2e, t_e2e = extract([args.encoder], manifest, out / "e2e", args.batch_size, args.workers, None)
        if one_on:
            a, t_a = extract([args.small[0]], manifest, out / "a", args.batch_size, args.workers, args.small_size)
            b, t_b = extract([args.small[1]], manifest, out / "b", args.batch_size, args.workers, args.small_size)
            s_one, t_one = extract(args.small, manifest, out / "ab", args.batch_size, args.workers, args.small_size)
        if r == 0:
            continue
        line = f"round {r}:"
        if e2e_on:
            cpu["bare"].append(c_bare)
            cpu["e2e"].append(t_e2e["cpu_s"])
            bare.append(n / s_bare)
            e2e.append(t_e2e["patches"] / t_e2e["total_s"])
            line += (f" bare {n / s_bare:.1f} patches/s, end to end {e2e[-1]:.1f} patches/s"
                     f" (whole call {n / s_e2e:.1f});")
        if one_on:
            cpu["two"].append(t_a["cpu_s"] + t_b["cpu_s"])
            cpu["one"].append(t_one["cpu_s"])
            one.append(s_one)
            two.append(a + b)
            line += f" two runs {a + b:.2f} s vs one pass {s_one:.2f} s ({t_one['patches']} patches)"
        timings.append((t_e2e if e2e_on else None, t_one if one_on else None))
        print(line, flush=True)
    t_e2e, t_one = timings[len(timings) // 2]
    if e2e_on:
        report_end_to_end(args, n, bare, e2e, cpu, t_e2e)
    if one_on:
        report_one_pass(args, one, two, cpu, t_one)


def report_end_to_end(args, n, bare, e2e, cpu, t_e2e) -> None:
    print(f"\n{args.encoder} on {n} patches of {args.patch_size} px, batch {args.batch_size}:")
    print(f"  bare forward on pre-loaded tensors   {statistics.median(bare):8.1f} patches/s")
    print(f"  extract-features end to end          {statistics.median(e2e):8.1f} patches/s")
    print(f"  ratio end to end / bare = {statistics.median(e2e) / statistics.median(bare):.3f}  (target >= 0.85)")
    c = {k: statistics.median(v) for k, v in cpu.items() if v}
    print(f"  CPU seconds (less sensitive to other load): bare {c['bare']:.1f}, end to end {c['e2e']:.1f} "
          f"(whole call, workers included): bare / end to end = {c['bare'] / c['e2e']:.3f}")
    print(f"  breakdown: model {t_e2e['model_s']:.1f} s, waiting for data {t_e2e['wait_s']:.1f} s, writing "
          f"{t_e2e['write_s']:.1f} s; read+decode+preprocess {t_e2e['read_s']:.1f} s in the worker(s)")


def report_one_pass(args, one, two, cpu, t_one) -> None:
    c = {k: statistics.median(v) for k, v in cpu.items() if v}
    print(f"\n{' + '.join(args.small)} at {args.small_size} px, {t_one['patches']} patches:")
    print(f"  two separate runs {statistics.median(two):.2f} s, one pass {statistics.median(one):.2f} s")
    print(f"  ratio two runs / one pass = {statistics.median(two) / statistics.median(one):.2f}x  (target >= 1.3)")
    print(f"  CPU seconds: two runs {c['two']:.1f}, one pass {c['one']:.1f}: ratio {c['two'] / c['one']:.2f}x")
    print(f"  one-pass breakdown: model {t_one['model_s']:.1f} s, waiting for data {t_one['wait_s']:.1f} s, "
          f"read+decode+preprocess {t_one['read_s']:.1f} s in the worker(s)")


if __name__ == "__main__":
    main()
