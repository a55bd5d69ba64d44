"""Gen-DINO data loading: source patches/s with generated views and interpolations, against plain DINO's loader.

Both sides are the trainer's own data (`pathgen.ssl.trainer.build_data`: the same stores, transform, item seeding
and collate), with and without the `gensis:` section, timed in interleaved rounds (median), so that load on the
machine hits both alike. Patches per CPU-second (main process + workers) is printed next to wall-clock patches/s,
because it does not depend on that load.

- augment_on workers: the workers cut every crop. Gen-DINO adds, per patch, p_gen x one generated image read (its
  2nd global crop is cut from it instead of the patch: no extra crop) and p_interp x two image reads and two
  global-size crops (x_int and its partner x2).
- augment_on device, "decode": the workers only read the images: Gen-DINO adds p_gen + 2 p_interp image reads per
  patch. "device aug": that loader plus load_batch (DeviceMultiCrop) in the main process, on the GPU when there is
  one; on a CPU-only machine the CPU does it, so that row says nothing about GPU speed.

The patches come from tiling the synthetic demo cohort (as bench_dataloading.py); the generated store holds one
view and one interpolation per patch, made as the tests make them (noised copies and pixel blends): only its
reads and crops are timed, not how its images were made.

    python benchmarks/bench_gensis_loading.py                  # 4 demo slides, 256 px, 2 workers, histo preset
    python benchmarks/bench_gensis_loading.py --workers 4 --rounds 5
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_dataloading import _cpu_seconds, prepare  # noqa: E402
from gensis_helpers import make_generated  # noqa: E402

from pathgen.config import load_config  # noqa: E402
from pathgen.runtime.device import get_device  # noqa: E402
from pathgen.ssl import batch as roles  # noqa: E402
from pathgen.ssl.config import SSLConfig  # noqa: E402
from pathgen.ssl.trainer import build_data  # noqa: E402


def rate(data, batch_size: int, workers: int, epochs: int, on_batch=None) -> tuple[float, float]:
    """(source patches per wall-clock second, per CPU second) over `epochs` passes, after one untimed pass.

    Workers are not persistent, so each pass's workers exit and their CPU time is counted."""
    cuda = torch.cuda.is_available()
    loader = DataLoader(data.dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=cuda, collate_fn=data.collate)
    for _ in loader:
        pass
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    for _ in range(epochs):
        for batch in loader:
            if on_batch is not None:
                on_batch(batch)
            n += batch_size
    if cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), n / (_cpu_seconds() - c0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one).")
    p.add_argument("--slides", type=int, default=4)
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1, help="Timed passes per round.")
    p.add_argument("--repeat", type=int, default=10, help="The decode-only loader's dataset is repeated this often, "
                   "so that a timed pass is thousands of patches and worker start-up does not dominate.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--preset", default="histo", choices=["histo", "natural"])
    p.add_argument("--p-gen", type=float, default=0.5)
    p.add_argument("--p-interp", type=float, default=0.5)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifest = prepare(work, args.slides, args.patch_size, args.mpp)["zarr"]
        from pathgen.store import find_stores

        generated = work / "generated.zarr"
        if not generated.exists():
            make_generated(generated, find_stores(manifest), views=1, interpolations=1)
        device = get_device()
        base = [f"data.sources=[{manifest}]", f"data.preset={args.preset}", f"data.device_input_size={args.patch_size}"]
        gensis = [f"gensis.generated={generated}", f"gensis.p_gen={args.p_gen}", f"gensis.p_interp={args.p_interp}"]
        pipelines = {}
        for path in ("workers", "device"):
            for name, extra in (("dino", []), ("gen-dino", gensis)):
                data = build_data(load_config(SSLConfig, None, [*base, f"data.augment_on={path}", *extra]))
                if path == "workers":
                    pipelines[("workers aug", name)] = (data, args.epochs, None)
                else:
                    repeated = data._replace(dataset=ConcatDataset([data.dataset] * args.repeat))
                    pipelines[("decode only", name)] = (repeated, args.epochs, None)
                    pipelines[("device aug", name)] = (data, args.epochs, lambda b, d=data: roles.load_batch(
                        b, device, d.multicrop))
        n = len(pipelines[("workers aug", "dino")][0].dataset)
        print(f"{n} patches of {args.patch_size} px from {args.slides} demo slides; workers {args.workers}, batch "
              f"{args.batch_size}, preset {args.preset}, crops 2x224 + 8x96; Gen-DINO p_gen {args.p_gen}, p_interp "
              f"{args.p_interp}; device aug on {device}; {args.rounds} interleaved rounds, median")
        rates: dict = {}
        for _ in range(args.rounds):
            for key, (data, epochs, on_batch) in pipelines.items():
                rates.setdefault(key, []).append(rate(data, args.batch_size, args.workers, epochs, on_batch))
        print(f"\n{'pipeline':<14}{'loader':<10}{'patches/s':>11}{'vs dino':>9}{'patches/CPU-s':>15}{'vs dino':>9}")
        for (pipeline, name), values in rates.items():
            wall, cpu = (statistics.median(v) for v in zip(*values, strict=True))
            bw, bc = (statistics.median(v) for v in zip(*rates[(pipeline, "dino")], strict=True))
            print(f"{pipeline:<14}{name:<10}{wall:>11.1f}{wall / bw:>8.2f}x{cpu:>15.1f}{cpu / bc:>8.2f}x")


if __name__ == "__main__":
    main()
