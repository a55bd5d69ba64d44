"""Plan the patch grid of a slide at a target resolution, and read its patches.

A patch is `patch_size` pixels at `target_mpp`. It covers `patch_size_level0` level-0 pixels and is read
from the coarsest pyramid level that is still at least as fine as the target, then resized down
(antialiased) to `patch_size`. Coordinates are level-0 top-left corners, row-major (y, then x), which is
the order tiles sit on disk in tiled TIFFs. `read_patches` reads a run of neighbouring patches as one region
and cuts them out of it, so each tile under them is decoded once and each reader call is amortised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathgen.errors import SlideError
from pathgen.slide.reader import Slide
from pathgen.slide.tiff import level_xy

_FINER_TOLERANCE = 0.10  # a target up to 10% finer than the scan is upsampled; beyond that is invented detail
# Widest region read at once, in pixels of the read level: 8 patches of 256 px. Wider gains nothing measurable
# (the per-call cost is already amortised) and only grows the region buffer.
REGION_SIDE = 2048


@dataclass
class PatchPlan:
    """Where the patches of one slide are and how to read them."""

    coords: np.ndarray  # int64 [N, 2] level-0 (x, y) top-left, row-major
    tissue_fraction: np.ndarray  # float32 [N]
    level: int  # pyramid level to read from
    read_size: int  # patch side in pixels at `level`; resized to patch_size
    patch_size: int  # output side in pixels at target_mpp
    patch_size_level0: int  # patch side in level-0 pixels
    target_mpp: float

    def __len__(self) -> int:
        return len(self.coords)


def tissue_fractions(
    mask: np.ndarray,
    mask_downsample: float,
    coords: np.ndarray,
    patch_size_level0: int,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Fraction of each level-0 square (coords, side patch_size_level0) that the mask marks as tissue.

    The mask's top-left pixel sits at level-0 `origin`. One summed-area table answers every patch in O(1),
    whatever the grid size.
    """
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    def edges(start: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        # A patch smaller than a mask pixel still looks at the one mask pixel it falls in.
        lo = np.clip(np.round(start / mask_downsample).astype(np.int64), 0, size - 1)
        hi = np.clip(np.round((start + patch_size_level0) / mask_downsample).astype(np.int64), lo + 1, size)
        return lo, hi

    x0, x1 = edges(coords[:, 0] - origin[0], w)
    y0, y1 = edges(coords[:, 1] - origin[1], h)
    area = (x1 - x0) * (y1 - y0)
    total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return (total / area).astype(np.float32)


def plan_patches(
    slide: Slide,
    target_mpp: float,
    patch_size: int,
    mask: np.ndarray,
    mask_downsample: float,
    threshold: float,
    region: tuple[int, int, int, int] | None = None,
    overlap: int = 0,
) -> PatchPlan:
    """Grid of whole patches inside `region`, kept where tissue fraction >= threshold.

    Neighbouring patches share `overlap` pixels at the target resolution (TRIDENT's convention; 0: none).

    `region` is the level-0 (x, y, w, h) the grid covers (default: the whole slide; the tiler passes
    `slide.bounds`, the scanned area), and its top-left corner is the grid's first patch. `mask` is a tissue
    mask of that region (e.g. detect_tissue on slide.thumbnail(region=...)), `mask_downsample` its level-0
    pixels per mask pixel.
    """
    if target_mpp <= 0 or patch_size <= 0:
        raise SlideError(slide.path, f"target mpp and patch size must be positive, got {target_mpp}, {patch_size}")
    if target_mpp < slide.mpp * (1 - _FINER_TOLERANCE):
        raise SlideError(
            slide.path,
            f"target mpp {target_mpp:g} is finer than the slide's level-0 mpp {slide.mpp:.4g} ({slide.mpp_source}); "
            "choose a coarser --mpp or check --slide-mpp",
        )
    scale = target_mpp / slide.mpp  # level-0 pixels per output pixel
    ps0 = max(1, round(patch_size * scale))
    level = slide.best_level_for_downsample(scale)
    read_size = max(1, round(ps0 / slide.level_downsamples[level]))

    if not 0 <= overlap < patch_size:
        raise SlideError(slide.path, f"overlap must be 0 <= overlap < patch size {patch_size}, got {overlap}")
    step = max(1, ps0 - round(overlap * scale))  # level-0 pixels between neighbouring patches
    x0, y0, width, height = region if region is not None else (0, 0, *slide.dimensions)
    ys = np.arange(y0, y0 + height - ps0 + 1, step, dtype=np.int64)
    xs = np.arange(x0, x0 + width - ps0 + 1, step, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # ij: y is the slow axis -> row-major order
    coords = np.stack([xx.ravel(), yy.ravel()], axis=1)
    frac = tissue_fractions(mask, mask_downsample, coords, ps0, (x0, y0))
    keep = frac >= threshold
    return PatchPlan(
        coords=coords[keep],
        tissue_fraction=frac[keep],
        level=level,
        read_size=read_size,
        patch_size=patch_size,
        patch_size_level0=ps0,
        target_mpp=float(target_mpp),
    )


def resize_patch(region: np.ndarray, patch_size: int) -> np.ndarray:
    """Antialiased resize of a square uint8 RGB region to patch_size (box filter for exact 2x, 4x, ...)."""
    from PIL import Image

    n = region.shape[0]
    if n == patch_size:
        return region
    img = Image.fromarray(region)
    if n > patch_size and n % patch_size == 0:
        img = img.reduce(n // patch_size)  # exact area average, and the fastest path for the common case
    else:
        img = img.resize((patch_size, patch_size), Image.Resampling.LANCZOS)
    return np.asarray(img)


def read_patch(slide: Slide, plan: PatchPlan, xy) -> np.ndarray:
    """uint8 [patch_size, patch_size, 3]: the patch at level-0 `xy`, read at plan.level and resized."""
    region = slide.read_region((int(xy[0]), int(xy[1])), plan.level, (plan.read_size, plan.read_size))
    return resize_patch(region, plan.patch_size)


def _runs(coords: np.ndarray, side: int, max_len: int) -> list[tuple[int, int]]:
    """[start, stop) index ranges of row-major coords in one grid row with no gap between neighbours (patches of
    `side` level-0 pixels that touch or overlap), at most max_len each."""
    runs, start = [], 0
    for i in range(1, len(coords) + 1):
        if (
            i == len(coords)
            or i - start == max_len
            or coords[i, 1] != coords[start, 1]
            or not 0 < coords[i, 0] - coords[i - 1, 0] <= side
        ):
            runs.append((start, i))
            start = i
    return runs


def read_patches(
    slide: Slide, plan: PatchPlan, coords: np.ndarray, out: np.ndarray, region_side: int = REGION_SIDE
) -> None:
    """Fill out[i] (uint8 [patch_size, patch_size, 3]) with the patch at level-0 coords[i].

    Neighbouring patches of a grid row are read as one region of up to `region_side` pixels of plan.level and
    cut from it; each patch starts at the level pixel nearest its level-0 corner (`level_xy`), as a patch
    read alone from the fast TIFF reader does. region_side=0 reads patch by patch (`read_patch`).
    """
    n = plan.read_size
    if region_side < 2 * n:  # not even two patches per region: nothing to batch
        for i, xy in enumerate(coords):
            out[i] = read_patch(slide, plan, xy)
        return
    ds = slide.level_downsamples[plan.level]
    for a, b in _runs(coords, plan.patch_size_level0, region_side // n):
        x0, y0 = int(coords[a, 0]), int(coords[a, 1])
        offsets = [level_xy(x, ds) - level_xy(x0, ds) for x in coords[a:b, 0]]
        region = slide.read_region((x0, y0), plan.level, (offsets[-1] + n, n))
        for i, dx in zip(range(a, b), offsets, strict=True):
            out[i] = resize_patch(region[:, dx : dx + n], plan.patch_size)
