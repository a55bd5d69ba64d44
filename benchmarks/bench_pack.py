"""`pathgen pack` against the bare work it cannot avoid, and its peak memory as the dataset grows.

A synthetic ImageNet-like ImageFolder (default 4 classes x 128 JPEGs of 400-500 x 300-375 px at quality 90, random
crops of scikit-image's pictures; written once to $TMPDIR/pathgen-bench-pack) is packed to 256 px stores.

Time, in this process, interleaved over --rounds (medians):
- bare: a loop of `pathgen.store.pack.load_image` over the images (PIL decode, RGB, ResizeCenterCrop(256)), the
  floor for any packer (no encoding, no writing);
- bare, PIL resize: the same loop with PIL's bicubic resize and crop in place of ResizeCenterCrop (what a packer
  without torch in its workers would do);
- pack: `pack_images(..., workers=0)` of the same images (the same decoding and resizing, plus JPEG q90 encoding,
  the store writes and their fsync).
Memory: peak RSS of a fresh subprocess packing all the images, and one packing a quarter of them (a path,label CSV
of every 4th image), sampled every 20 ms with psutil: the same if memory is flat in the dataset size.
Needs the bench extra (psutil).

    python benchmarks/bench_pack.py
    python benchmarks/bench_pack.py --per-class 256 --rounds 5
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import run_measured  # noqa: E402

PACK = """
import json, shutil, sys, time
import torchvision.datasets.folder, zarr, pathgen.data.augment, pathgen.slide.pool  # imports: outside the timing
from pathgen.store.pack import pack_images
shutil.rmtree(sys.argv[2], ignore_errors=True)
t0 = time.perf_counter()
pack_images(sys.argv[1], sys.argv[2], size=256, workers=0, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def load_image_pil(path, size: int):
    """Decode as load_image does, then PIL's bicubic resize (antialiased) of the shorter side and the centre crop."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def make_folder(root: Path, per_class: int) -> Path:
    """root/class_k/NNNN.jpg, written once; and root.csv listing every 4th image."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder = root / f"images_{per_class}"
    if not folder.exists():
        rng = np.random.default_rng(0)
        pictures = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
        tmp = folder.with_name(folder.name + ".tmp")
        for k, picture in enumerate(pictures):
            (tmp / f"class_{k}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = int(rng.integers(400, 501)), int(rng.integers(300, 376))
                s = rng.uniform(0.5, 1.0)
                ch, cw = int(picture.shape[0] * s), int(picture.shape[1] * s)
                y, x = int(rng.integers(0, picture.shape[0] - ch + 1)), int(rng.integers(0, picture.shape[1] - cw + 1))
                crop = Image.fromarray(picture[y : y + ch, x : x + cw]).resize((w, h), Image.BICUBIC)
                crop.save(tmp / f"class_{k}" / f"{i:04d}.jpg", quality=90)
        tmp.rename(folder)
    quarter = root / f"images_{per_class}_quarter.csv"
    files = sorted(folder.rglob("*.jpg"))[::4]
    quarter.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files))
    return folder


def run_side(code: str, args: list[str]) -> tuple[float, float]:
    """(seconds the side reports, peak RSS in MiB of its process tree) of one fresh subprocess."""
    m = run_measured([sys.executable, "-c", code, *args])
    return m.last_json()["seconds"], m.peak_gib * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pathgen-bench-pack")
    ap.add_argument("--per-class", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = make_folder(args.work, args.per_class)
    quarter = args.work / f"images_{args.per_class}_quarter.csv"
    n = 4 * args.per_class
    import shutil

    from pathgen.store.pack import list_images, load_image, pack_images

    _, items, _ = list_images(folder)
    out = args.work / "out"
    times: dict[str, list[float]] = {"bare": [], "bare, PIL resize": [], "pack": []}
    pack_images(quarter, args.work / "warm", size=256, workers=0, progress=False)  # imports and first calls
    for r in range(args.rounds):
        for name in (list(times) if r % 2 == 0 else list(reversed(times))):
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            if name.startswith("bare"):
                for path, _ in items:
                    (load_image if name == "bare" else load_image_pil)(path, 256)
            else:
                pack_images(folder, out, size=256, workers=0, progress=False)
            times[name].append(time.perf_counter() - t0)
    memory = {name: max(run_side(PACK, [str(src), str(args.work / f"mem_{name}")])[1] for _ in range(2))
              for name, src in (("all", folder), ("quarter", quarter))}
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{n} images of 400-500 x 300-375 px (JPEG q90) -> 256 px stores, medians of {args.rounds} rounds")
    for name, seconds in med.items():
        print(f"  {name:18s} {seconds:7.2f} s  {n / seconds:7.1f} img/s")
    print(f"pack / bare time: {med['pack'] / med['bare']:.2f}x; bare with PIL's resize / bare: "
          f"{med['bare, PIL resize'] / med['bare']:.2f}x")
    print(f"peak RSS packing {n} images: {memory['all']:.0f} MiB; {n // 4} images: {memory['quarter']:.0f} MiB "
          f"({memory['all'] / memory['quarter']:.2f}x)")


if __name__ == "__main__":
    main()
