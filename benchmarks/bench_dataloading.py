"""Data loading: patch stores (Zarr, HDF5) vs an ImageFolder of JPEG files holding the same patches.

Measured side by side in one run, through the same code path (`build_dataset` -> DataLoader with the same
workers, batch size and MultiCropAugmentation); only the source differs. The patches come from tiling the
synthetic demo cohort with `tile_cohort`; the JPEG folder (quality 90) is written from the Zarr stores.

For each source it reports patches/s in three pipelines:
- "augmented": augmented multi-crop batches made in the workers (data.augment_on: workers, the default);
- "decode only": the loader of data.augment_on: device, whose workers only decode (uint8 batches for the
  batched multi-crop on the GPU). Its dataset is repeated --repeat times so that a timed pass is thousands of
  patches, as a real epoch is, and worker start-up does not dominate;
- "device aug": that loader plus `DeviceMultiCrop` on each batch in the main process, on the GPU if there is
  one (on a CPU-only machine the CPU does it, so this says nothing about GPU speed).
Plus a single-process breakdown of the per-patch cost of decoding vs augmenting. Sources are timed in
interleaved rounds (median over rounds), so background load on the machine hits them alike; patches per
CPU-second (main process + DataLoader workers) is printed next to wall-clock patches/s because it does not
depend on that load.

    python benchmarks/bench_dataloading.py                     # 4 demo slides, 2 workers, histo preset
    python benchmarks/bench_dataloading.py --workers 4 --preset natural --rounds 5
"""

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader

from pathgen.data.augment import MultiCropAugmentation, ResizeCenterCrop
from pathgen.data.datasets import build_dataset
from pathgen.data.device_augment import DeviceMultiCrop
from pathgen.runtime.device import get_device


def prepare(work: Path, n_slides: int, patch_size: int, mpp: float) -> dict[str, Path]:
    """Demo cohort -> Zarr and HDF5 stores -> JPEG ImageFolder (one sub-folder per slide). Reused if present."""
    from pathgen.pipeline.demo_cohort import make_demo_cohort
    from pathgen.slide.tiler import tile_cohort
    from pathgen.store import find_stores, open_store

    labels = work / "cohort" / "labels.csv"
    if not labels.exists():
        make_demo_cohort(work / "cohort", n_slides=n_slides)
    slides = work / "cohort" / "slides"
    sources = {}
    for fmt in ("zarr", "h5"):
        manifest = tile_cohort(slides, work / fmt, mpp=mpp, patch_size=patch_size, fmt=fmt, workers=2)
        sources[fmt] = manifest
    jpeg = work / "jpeg"
    if not jpeg.exists():
        tmp = work / "jpeg.tmp"
        for store_path in find_stores(sources["zarr"]):
            with open_store(store_path) as store:
                folder = tmp / store_path.stem
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(len(store)):
                    Image.fromarray(store[i]).save(folder / f"{i:05d}.jpg", quality=90)
        tmp.rename(jpeg)
    sources["jpeg"] = jpeg
    return {"jpeg": sources["jpeg"], "zarr": sources["zarr"], "h5": sources["h5"]}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def loader_rate(dataset, batch_size: int, workers: int, epochs: int, on_batch=None) -> tuple[float, float]:
    """(patches per wall-clock second, patches per CPU second) over `epochs` passes; on_batch(images) if given.

    One untimed pass first warms the page cache. Workers are not persistent, so each pass's workers exit
    and their CPU time is counted: CPU seconds per patch do not depend on what else runs on the machine.
    Batches are pinned and the clock waits for queued GPU work, as in training on a GPU.
    """
    cuda = torch.cuda.is_available()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=cuda)
    for _ in loader:
        pass
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    for _ in range(epochs):
        for images, _ in loader:
            if on_batch is not None:
                on_batch(images)
            n += batch_size
            del images
    if cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), n / (_cpu_seconds() - c0)


def per_patch_ms(fn, items: list, repeat: int = 2) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return 1000 * (time.perf_counter() - t0) / (repeat * len(items))


def breakdown(datasets: dict, aug: MultiCropAugmentation, n: int = 200) -> dict[str, float]:
    """Single-process ms per patch: a random item of each source through the decode-only loader's dataset
    (read + decode + uint8 tensor), and the per-image multi-crop augmentation itself."""
    torch.set_num_threads(1)  # as in a DataLoader worker
    out = {}
    for name, dataset in datasets.items():
        picks = torch.randint(len(dataset), (n,)).tolist()
        out[f"decode {name}"] = per_patch_ms(lambda i, d=dataset: d[i], picks)
    img = datasets["jpeg"][0][0]
    out["multi-crop augmentation"] = per_patch_ms(aug, [img] * 16)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one).")
    p.add_argument("--slides", type=int, default=4, help="Demo slides to tile (4096 x 3072 px at 0.25 mpp).")
    p.add_argument("--mpp", type=float, default=0.25, help="Tiling resolution (0.25 = level 0: most patches).")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1, help="Timed passes per round.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the median is reported.")
    p.add_argument("--repeat", type=int, default=30, help="Passes over the patches per decode-only epoch.")
    p.add_argument("--preset", default="histo", choices=["histo", "natural"])
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--n-local", type=int, default=8)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sources = prepare(work, args.slides, args.patch_size, args.mpp)
        aug = MultiCropAugmentation(args.global_size, args.local_size, args.n_local, preset=args.preset)
        device = get_device()
        on_device = DeviceMultiCrop(args.global_size, args.local_size, args.n_local, preset=args.preset)
        augmented = {name: build_dataset(src, transform=aug) for name, src in sources.items()}
        to_uint8 = ResizeCenterCrop(args.patch_size)  # the workers' transform under data.augment_on: device
        decoded = {name: build_dataset(src, transform=to_uint8) for name, src in sources.items()}
        sizes = {name: len(ds) for name, ds in augmented.items()}
        assert len(set(sizes.values())) == 1, f"sources hold different patch counts: {sizes}"
        print(
            f"{sizes['jpeg']} patches of {args.patch_size} px from {args.slides} demo slides; workers {args.workers}, "
            f"batch {args.batch_size}, preset {args.preset}, crops 2x{args.global_size} + "
            f"{args.n_local}x{args.local_size}; decode only x{args.repeat} passes per epoch; device aug on {device}; "
            f"{args.rounds} interleaved rounds x {args.epochs} epoch(s), median"
        )
        pipelines = {
            "augmented": (augmented, None),
            "decode only": ({k: ConcatDataset([d] * args.repeat) for k, d in decoded.items()}, None),
            "device aug": (decoded, lambda images: on_device(images.to(device, non_blocking=True))),
        }
        rates: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for name in sources:
                for pipeline, (datasets, on_batch) in pipelines.items():
                    rate = loader_rate(datasets[name], args.batch_size, args.workers, args.epochs, on_batch)
                    rates.setdefault((pipeline, name), []).append(rate)
        print(f"\n{'pipeline':<14}{'source':<8}{'patches/s':>11}{'vs jpeg':>9}{'patches/CPU-s':>15}{'vs jpeg':>9}")
        for (pipeline, name), values in rates.items():
            wall, cpu = (statistics.median(v) for v in zip(*values, strict=True))
            base_wall, base_cpu = (statistics.median(v) for v in zip(*rates[(pipeline, "jpeg")], strict=True))
            print(f"{pipeline:<14}{name:<8}{wall:>11.1f}{wall / base_wall:>8.2f}x{cpu:>15.1f}{cpu / base_cpu:>8.2f}x")
        print("\nsingle process, ms per patch:")
        for what, ms in breakdown(decoded, aug).items():
            print(f"  {what:<26}{ms:8.2f}")


if __name__ == "__main__":
    main()
