"""Tissue detection on a low-resolution thumbnail: HSV saturation + Otsu, then morphology.

Saturation separates stained tissue from grey-white glass for H&E and IHC alike (brown DAB and blue
hematoxylin are both saturated; glass is not). Smoothing first lets pale stroma between stained nuclei
count as tissue. Two guards keep Otsu honest: its threshold never drops below the glass's own saturation
plus a margin (nor below `min_saturation`), so blank or tinted glass (where Otsu would split the noise in
half) gives an empty mask; and it never rises above `max_threshold`, so a slide dominated by dark,
saturated tissue does not push pale tissue into the background. The glass's saturation is measured on bright,
unsaturated pixels, not on Otsu's lower class: on a slide that is mostly tissue, Otsu splits pale from dark
tissue, and its lower class is pale tissue.

Artefacts are found first, on the unsmoothed pixels, and taken out before anything is measured: marker pen by
hue (green and blue inks are hues no stain has; red pen shares eosin's and is not caught), black ink and
scanner padding by being dark and grey. `segment_tissue` returns them beside the tissue for the QC picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MASK_MPP = 8.0  # um per mask pixel: 16 mask px across a 256 px patch at 0.5 mpp
# Pen inks, in HSV (hue in turns): stains are pink to purple (0.7-1.0, 0-0.05), brown DAB (0.03-0.12) and
# hematoxylin blue-purple (0.6-0.8, rarely above 0.5 saturation at mask resolution; the demo's dense, restained
# lesions sit at 0.70-0.74). Green and cyan inks have hues no stain has; blue ink is a purer, more saturated blue.
GREEN_PEN = ((0.20, 0.50), 0.3)  # (hue range, minimum saturation)
BLUE_PEN = ((0.55, 0.67), 0.6)
BLACK_VALUE, BLACK_SATURATION = 0.3, 0.3  # darker and greyer than tissue: black ink, padding
PEN_HALO_UM = 8.0  # ink fades into glass at a stroke's edge; those pixels are pen too
# Brightfield slides are mostly bright glass or stained tissue; a median this dark is a dark background.
DARK_BACKGROUND_VALUE = 0.3


@dataclass
class TissueMask:
    tissue: np.ndarray  # bool [H, W]
    pen: np.ndarray  # bool [H, W]: marker pen, black ink and black padding, never tissue


def hsv_image(rgb: np.ndarray) -> np.ndarray:
    """float32 HSV in [0, 1] of a uint8 (or float [0, 1]) RGB image: skimage's rgb2hsv, in a thirtieth of its time.

    Tissue detection runs once per slide on the critical path of tiling it (nothing can be read before the plan).
    skimage's float64 conversion was a quarter of it; then ufuncs over interleaved RGB (and a max over its short last
    axis) took 0.16 s of a 1250 x 938 thumbnail, against 0.06 s on contiguous channel planes with one division.
    """
    r, g, b = (np.array(rgb[..., c], dtype=np.float32) for c in range(3))
    if rgb.dtype == np.uint8:
        for x in (r, g, b):
            x *= np.float32(1 / 255)
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = high - low
    # The sector's offset (0, 2 or 4 in units of delta) plus the difference of the other two, over delta once.
    hue = np.where(high == r, g - b, np.where(high == g, 2 * delta + (b - r), 4 * delta + (r - g)))
    hue /= np.where(delta > 0, delta, np.float32(1))
    hue *= np.float32(1 / 6)
    hue %= 1.0
    hue[delta == 0] = 0.0
    sat = delta / np.where(high > 0, high, np.float32(1))
    return np.stack([hue, sat, high], axis=-1)


def _label_sizes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of `mask` (labels, 0 outside) and each label's size in pixels."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    return labels, np.bincount(labels.ravel())


def remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """`mask` without its 4-connected objects of at most `max_size` px (skimage's, without its 0.7 s import)."""
    labels, sizes = _label_sizes(mask)
    keep = sizes > max_size
    keep[0] = False
    return keep[labels]


def is_dark_background(thumb_rgb: np.ndarray) -> bool:
    """True for a fluorescence or dark-field image: most of it is dark, where a brightfield slide's glass is white."""
    value = np.maximum(np.maximum(thumb_rgb[..., 0], thumb_rgb[..., 1]), thumb_rgb[..., 2])  # 5x max(axis=-1)
    return float(np.median(value)) / 255 < DARK_BACKGROUND_VALUE


def find_pen(hsv: np.ndarray, mpp: float = MASK_MPP) -> np.ndarray:
    """Marker pen (green, blue), black ink and black padding, with their fading edges."""
    from scipy import ndimage

    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    pen = (val < BLACK_VALUE) & (sat < BLACK_SATURATION)
    for (lo, hi), min_sat in (GREEN_PEN, BLUE_PEN):
        pen |= (hue >= lo) & (hue <= hi) & (sat >= min_sat)
    if pen.any() and PEN_HALO_UM / mpp >= 0.5:
        pen = ndimage.distance_transform_edt(~pen) <= PEN_HALO_UM / mpp
    return pen


def detect_tissue(thumb_rgb: np.ndarray, mpp: float = MASK_MPP, **kwargs) -> np.ndarray:
    """Boolean tissue mask with the thumbnail's H x W (see `segment_tissue`)."""
    return segment_tissue(thumb_rgb, mpp, **kwargs).tissue


def segment_tissue(
    thumb_rgb: np.ndarray,
    mpp: float = MASK_MPP,
    min_saturation: float = 0.04,
    max_threshold: float = 0.05,
    dark_value: float = 0.5,
    background_margin: float = 0.02,
    smooth_um: float = 4.0,
    closing_um: float = 16.0,
    min_object_um2: float = 1_000.0,
    min_hole_um2: float = 10_000.0,
) -> TissueMask:
    """Tissue and pen masks with the thumbnail's H x W; `mpp` is the thumbnail's microns per pixel.

    Sizes are in microns, so a mask means the same at any thumbnail resolution:
    - min_saturation / max_threshold: clamp Otsu's saturation threshold into this range.
    - background_margin: the threshold also stays this far above the glass's own saturation (see
      `glass_saturation`), so tinted glass from some scanners is not taken for tissue.
    - smooth_um: Gaussian blur (sigma) of saturation first, so pale stroma between stained nuclei reads as
      tissue and glass noise averages out.
    - dark_value: pixels darker than this HSV value count as tissue even if unsaturated (dense, grey tissue),
      unless they are black (see `find_pen`).
    - closing_um: radius of the disk that joins tissue fragments closer than about twice this.
    - min_object_um2: smaller objects (0.001 mm^2, a 32 um square: a few cells) are dust and are removed.
    - min_hole_um2: smaller enclosed holes are filled (0.01 mm^2 is a 100 um square, 60% of a 256 px patch at
      0.5 mpp: a larger hole gives glass patches).
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    if thumb_rgb.ndim != 3 or thumb_rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {thumb_rgb.shape}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    hsv = hsv_image(thumb_rgb)
    pen = find_pen(hsv, mpp)
    # Pen reads as glass from here on: its saturation must not spill into the smoothing nor sway Otsu.
    sat, val = np.where(pen, 0.0, hsv[..., 1]), np.where(pen, 1.0, hsv[..., 2])
    if smooth_um > 0:  # skimage.filters.gaussian's defaults: edges repeated, 4 sigma
        sat = ndimage.gaussian_filter(sat, sigma=smooth_um / mpp, mode="nearest", truncate=4.0)
        val = ndimage.gaussian_filter(val, sigma=smooth_um / mpp, mode="nearest", truncate=4.0)
    # Otsu needs two distinct values; a perfectly uniform image is all glass (or all tissue: not our case).
    otsu = threshold_otsu(sat) if sat.max() > sat.min() else 1.0
    glass = glass_saturation(sat, val, otsu)
    floor = max(min_saturation, glass + background_margin)
    threshold = float(min(max(otsu, floor), max(max_threshold, floor)))
    mask = ((sat > threshold) | (val < dark_value)) & ~pen

    mask = close_disk(mask, closing_um / mpp)
    px_area = mpp * mpp
    mask = remove_small_objects(mask, max(1, int(min_object_um2 / px_area)))
    mask = fill_small_holes(mask, max(1, int(min_hole_um2 / px_area)))
    return TissueMask(mask & ~pen, pen)


def fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fill background regions of at most `max_size` px that tissue encloses (not those reaching the border: on a
    small slide the glass around the tissue can be smaller than a hole worth keeping)."""
    background, sizes = _label_sizes(~mask)
    if len(sizes) == 1:
        return mask
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    small = sizes <= max_size
    small[0] = False
    small[border] = False
    return mask | small[background]


DISK_FOOTPRINT_MAX_RADIUS = 4.0  # up to here a disk footprint is faster than distance transforms (radius 2: 6x)


def close_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing with the disk of pixels within `radius` of the centre.

    Small radii (the usual 16 um at 8 um/px is 2 px) use the disk as a footprint. Larger ones use two Euclidean
    distance transforms, which give the same result in time linear in the image whatever the radius, where a
    footprint costs radius^2 per pixel. The mask is extended by edge replication first, so tissue running off the
    slide stays tissue up to the border while glass near the border is not joined to it (padding with tissue would
    fill every bay within `radius` of the edge).
    """
    from scipy import ndimage

    if radius < 0.5 or not mask.any():
        return mask.copy()
    pad = math.ceil(radius) + 1
    padded = np.pad(mask, pad, mode="edge")
    if radius <= DISK_FOOTPRINT_MAX_RADIUS:
        r = math.floor(radius)
        y, x = np.mgrid[-r : r + 1, -r : r + 1]
        disk = x * x + y * y <= radius * radius
        # border_value=1: like the distance transform, erosion sees nothing beyond the (padded) edge.
        closed = ndimage.binary_erosion(ndimage.binary_dilation(padded, disk), disk, border_value=1)
    else:
        dilated = ndimage.distance_transform_edt(~padded) <= radius
        closed = dilated if dilated.all() else ndimage.distance_transform_edt(dilated) > radius
    return closed[pad:-pad, pad:-pad]


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
