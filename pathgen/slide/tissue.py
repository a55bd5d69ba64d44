"""Tissue detection on a low-resolution thumbnail: HSV saturation + Otsu, then morphology.

Saturation separates stained tissue from grey-white glass for H&E and IHC alike (brown DAB and blue
hematoxylin are both saturated; glass is not). Smoothing first lets pale stroma between stained nuclei
count as tissue. Two guards keep Otsu honest: its threshold never drops below the glass's own saturation
plus a margin (nor below `min_saturation`), so blank or tinted glass (where Otsu would split the noise in
half) gives an empty mask; and it never rises above `max_threshold`, so a slide dominated by dark,
saturated tissue does not push pale tissue into the background. The glass's saturation is measured on bright,
unsaturated pixels, not on Otsu's lower class: on a slide that is mostly tissue, Otsu splits pale from dark
tissue, and its lower class is pale tissue.
"""

from __future__ import annotations

import numpy as np


def detect_tissue(
    thumb_rgb: np.ndarray,
    min_saturation: float = 0.04,
    max_threshold: float = 0.05,
    dark_value: float = 0.5,
    background_margin: float = 0.02,
    smooth_sigma: float = 4.0,
    closing_radius: int = 4,
    min_object_fraction: float = 2e-4,
    min_hole_fraction: float = 5e-3,
) -> np.ndarray:
    """Boolean tissue mask with the thumbnail's H x W.

    - min_saturation / max_threshold: clamp Otsu's saturation threshold into this range.
    - background_margin: the threshold also stays this far above the glass's own saturation (see
      `glass_saturation`), so tinted glass from some scanners is not taken for tissue.
    - smooth_sigma: Gaussian blur (thumbnail px) of saturation first, so pale stroma between stained nuclei
      reads as tissue and glass noise averages out.
    - dark_value: pixels darker than this HSV value count as tissue even if unsaturated (dense, grey tissue),
      unless they are near black (< 0.1), which is scanner padding or pen.
    - closing_radius: disk radius (thumbnail px) that joins nearby tissue fragments.
    - min_object_fraction / min_hole_fraction: objects and holes smaller than this fraction of the
      thumbnail area are dust and artefacts; they are removed and filled.
    """
    from skimage import color, filters, morphology

    if thumb_rgb.ndim != 3 or thumb_rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {thumb_rgb.shape}")
    hsv = color.rgb2hsv(thumb_rgb[..., :3])
    sat, val = hsv[..., 1], hsv[..., 2]
    if smooth_sigma > 0:
        sat = filters.gaussian(sat, sigma=smooth_sigma)
        val = filters.gaussian(val, sigma=smooth_sigma)
    # Otsu needs two distinct values; a perfectly uniform image is all glass (or all tissue: not our case).
    otsu = filters.threshold_otsu(sat) if np.ptp(sat) > 0 else 1.0
    glass = glass_saturation(sat, val, otsu)
    floor = max(min_saturation, glass + background_margin)
    threshold = float(min(max(otsu, floor), max(max_threshold, floor)))
    mask = (sat > threshold) | ((val < dark_value) & (val > 0.1))

    if closing_radius > 0:
        mask = morphology.closing(mask, morphology.disk(closing_radius))
    area = mask.shape[0] * mask.shape[1]
    min_object = max(1, int(min_object_fraction * area))
    min_hole = max(1, int(min_hole_fraction * area))
    mask = morphology.remove_small_objects(mask, max_size=min_object)
    mask = morphology.remove_small_holes(mask, max_size=min_hole)
    return mask


# Glass is bright and nearly grey: tinted glass reaches a saturation of ~0.08, pale H&E starts around 0.1-0.15.
GLASS_VALUE = 0.8
GLASS_MAX_SATURATION = 0.12
_GLASS_MIN_FRACTION = 1e-3


def glass_saturation(sat: np.ndarray, val: np.ndarray, otsu: float) -> float:
    """The saturation of the glass: the median over bright, low-saturation pixels.

    Where there are too few of those (all tissue, or glass tinted beyond GLASS_MAX_SATURATION), Otsu's lower class
    stands in: on a slide of tinted glass alone that is the glass, which keeps such a slide empty.
    """
    glass = (val >= GLASS_VALUE) & (sat <= GLASS_MAX_SATURATION)
    if glass.sum() >= max(20, _GLASS_MIN_FRACTION * glass.size):
        return float(np.median(sat[glass]))
    return float(np.median(sat[sat <= otsu]))
