"""QC picture of a tiling: the thumbnail, the tissue contour, the region of interest, what was excluded as pen, and
the grid of kept patches, each in its own colour, with a legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathgen.slide.grid import PatchPlan

CONTOUR_COLOUR = (0, 200, 0)  # tissue
GRID_COLOUR = (30, 60, 255)  # kept patches
ROI_COLOUR = (255, 140, 0)  # --roi regions
PEN_COLOUR = (230, 0, 230)  # marker pen, black ink and padding, excluded
LEGEND_HEIGHT = 16


def _scaled(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask of any resolution on the thumbnail's pixels (nearest neighbour)."""
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1).astype(int)
    return mask[np.ix_(rows, cols)]


def _contours(draw, mask: np.ndarray, size: tuple[int, int], colour, width: int) -> None:
    from skimage import measure

    th, tw = size
    sy, sx = th / mask.shape[0], tw / mask.shape[1]
    # Pad so contours close around regions touching the border.
    for contour in measure.find_contours(np.pad(mask.astype(np.uint8), 1), 0.5):
        pts = [((c - 1 + 0.5) * sx, (r - 1 + 0.5) * sy) for r, c in contour]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=width)


def render_qc(
    slide_thumb: np.ndarray,
    mask: np.ndarray,
    plan: PatchPlan,
    thumb_downsample: float,
    out_png: Path,
    origin: tuple[int, int] = (0, 0),
    pen: np.ndarray | None = None,
    roi: np.ndarray | None = None,
) -> None:
    """Write a PNG of `slide_thumb` with the tissue contour (green), the excluded pen (magenta, shaded), the region
    of interest (orange) and each kept patch (blue squares).

    The masks may be at any resolution covering the thumbnail; they are scaled onto it. `thumb_downsample` is
    level-0 pixels per thumbnail pixel, as returned by Slide.thumbnail(), and `origin` the level-0 position of its
    top-left pixel.
    """
    from PIL import Image, ImageDraw

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.ascontiguousarray(slide_thumb[..., :3])
    th, tw = rgb.shape[:2]
    legend = [("tissue", CONTOUR_COLOUR), ("patches", GRID_COLOUR)]
    if pen is not None and pen.any():
        shade = _scaled(pen, (th, tw))
        rgb = rgb.copy()
        rgb[shade] = (0.5 * rgb[shade] + 0.5 * np.array(PEN_COLOUR)).astype(np.uint8)
        legend.append(("pen / black", PEN_COLOUR))
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    line = max(1, round(max(th, tw) / 800))
    _contours(draw, mask, (th, tw), CONTOUR_COLOUR, line)
    if roi is not None:
        _contours(draw, roi, (th, tw), ROI_COLOUR, line + 1)
        legend.append(("ROI", ROI_COLOUR))
    side = plan.patch_size_level0 / thumb_downsample
    for x, y in plan.coords:
        x0, y0 = (x - origin[0]) / thumb_downsample, (y - origin[1]) / thumb_downsample
        draw.rectangle([x0, y0, x0 + side, y0 + side], outline=GRID_COLOUR, width=1)
    # The legend goes on a white strip below the picture, where it hides nothing.
    card = Image.new("RGB", (tw, th + LEGEND_HEIGHT), (255, 255, 255))
    card.paste(img, (0, 0))
    draw = ImageDraw.Draw(card)
    for i, (label, colour) in enumerate(legend):
        x, y = 4 + 90 * i, th + 3
        draw.rectangle([x, y, x + 9, y + 9], fill=colour)
        draw.text((x + 13, y - 1), label, fill=(0, 0, 0))
    img = card
    img.save(out_png)
