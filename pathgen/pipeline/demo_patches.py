"""The demo's labelled set: normal and lesion patches cut from held-out synthetic slides, train and test apart.

Lesion and normal tissue share one colour distribution (see `demo_tissue`), and every slide has its own stain
and scanner; on top of that every patch gets its own stain and scanner variation. So colour says nothing about
the label, and a kNN on features that follow colour (a network at random initialisation) is near chance, while
one on features that follow nuclear morphology is not. The kNN train (memory bank) and test patches come from
DIFFERENT slides, none of them one of the cohort's (the encoder's training slides), so neither a slide's look
nor its tissue can leak from one side to the other.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pathgen.pipeline.demo_cohort import SyntheticSlide, slide_seeds
from pathgen.pipeline.demo_tissue import TEXEL

SPLITS = ("train", "test")
CLASSES = ("normal", "lesion")
_LABELLED_STREAM = 1  # random stream of the held-out slides' seeds ([seed, stream]); the cohort uses 0


def labelled_slide_seeds(seed: int, n_slides: int) -> list[int]:
    """Seeds of the held-out slides of `make_demo_patches(seed=seed)`: the first half train, the rest test."""
    return slide_seeds(seed, n_slides, _LABELLED_STREAM)


def make_demo_patches(
    out_dir: str | Path,
    n_per_class: int = 200,
    size: int = 64,
    seed: int = 0,
    *,
    n_slides: int = 8,
    width: int = 4096,
    height: int = 3072,
    slide_mpp: float = 0.25,
    mpp: float = 0.5,
    min_lesion: float = 0.75,
    min_tissue: float = 0.98,
    stain: tuple[float, float] = (0.1, 0.005),
    brightness: float = 0.08,
    hue: float = 0.02,
) -> Path:
    """Labelled ImageFolders `out_dir/{train,test}/{normal,lesion}/*.png` (n_per_class each), plus ground_truth.csv.

    The `n_slides` held-out slides are positive `SyntheticSlide`s whose seeds come from a different random stream
    than the cohort's (`labelled_slide_seeds`); the first half give the train patches, the other half the test
    patches, each slide an equal share of each class. Patches are `size` px at `mpp` um/px (the demo tiles 64 px
    at 0.5 mpp), area-averaged from `slide_mpp` like a tiler reading level 0. Labels come from the slides' ground
    truth: "lesion" if at least `min_lesion` of the patch is lesion, "normal" if none of it is; both need
    `min_tissue` tissue. Every patch is then restained and rescanned on its own: HED jitter (`stain` = (alpha,
    beta) of `HEDJitter`), brightness x U(1 -/+ `brightness`) and a hue shift of U(-/+ `hue`) turns. The ground
    truth records each patch's split, slide seed, place and lesion fraction.
    """
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from pathgen.data.augment import HEDJitter

    if n_slides < 2 or n_slides % 2:
        raise ValueError(f"n_slides must be even and >= 2 (half train, half test slides), got {n_slides}")
    scale = round(mpp / slide_mpp)
    if scale < 1 or not math.isclose(scale * slide_mpp, mpp):
        raise ValueError(f"mpp {mpp} must be a whole multiple of slide_mpp {slide_mpp}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, _LABELLED_STREAM, 1])  # positions and jitter; the seeds use [seed, stream]
    side = size * scale  # level-0 px
    seeds = labelled_slide_seeds(seed, n_slides)
    slides = [SyntheticSlide(width, height, seed=s, positive=True) for s in seeds]
    jitter = HEDJitter(*stain)

    def draw(s: SyntheticSlide, label: str) -> tuple[int, int, float, float]:
        """Rejection-sample one patch position of the class; lesion patches are drawn around a lesion disc."""
        for _ in range(10_000):
            if label == "lesion":
                cx, cy, r = s.lesions[int(rng.integers(len(s.lesions)))]
                x, y = (int(v - side / 2 + rng.uniform(-r, r)) for v in (cx, cy))
            else:
                x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            # on the texel grid: a patch straddling texels would be blurred by the area average, small nuclei more
            x, y = x - (x + s.offset[0]) % TEXEL, y - (y + s.offset[1]) % TEXEL
            if not (0 <= x <= width - side and 0 <= y <= height - side):
                continue
            tissue = s.tissue_mask(x, y, side, side)
            t, lesion = float(tissue.mean()), float((s.lesion_mask(x, y, side, side) * tissue).mean())
            if t >= min_tissue and (lesion >= min_lesion if label == "lesion" else lesion == 0.0):
                return x, y, t, lesion
        raise RuntimeError(f"could not place a {label} patch; are the slides large enough for {side} px patches?")

    rows = []
    half = n_slides // 2
    for split, group in (("train", range(half)), ("test", range(half, n_slides))):
        for label in CLASSES:
            (out_dir / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                s = slides[group[i % half]]
                x, y, tissue, lesion = draw(s, label)
                img = Image.fromarray(s.tile(x, y, side, side)).reduce(scale)
                t = TF.to_dtype(TF.to_image(img), torch.float32, scale=True)
                a = torch.from_numpy(rng.uniform(1 - stain[0], 1 + stain[0], 3)).float()
                b = torch.from_numpy(rng.uniform(-stain[1], stain[1], 3)).float()
                t = jitter.jitter(t, a, b) * float(rng.uniform(1 - brightness, 1 + brightness))
                t = TF.adjust_hue(t.clamp(0, 1), float(rng.uniform(-hue, hue)))
                name = f"{label}_{i:04d}.png"
                pixels = (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(pixels).save(out_dir / split / label / name)
                rows.append({"path": f"{split}/{label}/{name}", "split": split, "label": label, "slide_seed": s.seed,
                             "x": x, "y": y, "size_level0": side, "tissue_fraction": round(tissue, 4),
                             "lesion_fraction": round(lesion, 4)})
    with (out_dir / "ground_truth.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    examples_picture(out_dir).save(out_dir / "examples.png")
    return out_dir


def examples_picture(patches: str | Path, n: int = 8, split: str = "train", zoom: int = 2):
    """A PIL picture of the task: the first `n` normal patches of `split` in one row, its first `n` lesion patches
    below, each `zoom` x."""
    import torch
    from PIL import Image

    from pathgen.data.augment import rows_picture

    def tensor(path: Path) -> torch.Tensor:
        img = Image.open(path).convert("RGB")
        img = img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)  # pixels stay pixels
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255

    rows = [[tensor(p) for p in sorted((Path(patches) / split / label).glob("*.png"))[:n]] for label in CLASSES]
    return rows_picture(rows, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
