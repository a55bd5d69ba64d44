"""QC picture of a tiling: the thumbnail, the tissue contour and the grid of kept patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathgen.slide.grid import PatchPlan

CONTOUR_COLOUR = (0, 200, 0)
GRID_COLOUR = (30, 60, 255)


def render_qc(
    slide_thumb: np.ndarray,
    mask: np.ndarray,
    plan: PatchPlan,
    thumb_downsample: float,
    out_png: Path,
    origin: tuple[int, int] = (0, 0),
) -> None:
    """Write a PNG of `slide_thumb` with the mask's contour (green) and each kept patch (blue squares).

    `mask` may be at any resolution; it is scaled onto the thumbnail. `thumb_downsample` is level-0
    pixels per thumbnail pixel, as returned by Slide.thumbnail(), and `origin` the level-0 position of its
    top-left pixel.
    """
    from PIL import Image, ImageDraw
    from skimage import measure

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(slide_thumb[..., :3]))
    draw = ImageDraw.Draw(img)
    th, tw = slide_thumb.shape[:2]
    sy, sx = th / mask.shape[0], tw / mask.shape[1]
    line = max(1, round(max(th, tw) / 800))
    # Pad so contours close around tissue touching the border.
    for contour in measure.find_contours(np.pad(mask.astype(np.uint8), 1), 0.5):
        pts = [((c - 1 + 0.5) * sx, (r - 1 + 0.5) * sy) for r, c in contour]
        if len(pts) > 1:
            draw.line(pts, fill=CONTOUR_COLOUR, width=line)
    side = plan.patch_size_level0 / thumb_downsample
    for x, y in plan.coords:
        x0, y0 = (x - origin[0]) / thumb_downsample, (y - origin[1]) / thumb_downsample
        draw.rectangle([x0, y0, x0 + side, y0 + side], outline=GRID_COLOUR, width=1)
    img.save(out_png)
