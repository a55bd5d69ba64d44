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
        if len(contour) > 1:  # (row, col) -> flat x0, y0, x1, y1, ...
            draw.line(((contour[:, ::-1] - 0.5) * (sx, sy)).ravel().tolist(), fill=colour, width=width)


def _outline_squares(rgb: np.ndarray, corners: np.ndarray, side: float, colour) -> None:
    """Paint the 1 px outline of each square (top-left corners [N, 2] as x, y and `side`, in picture pixels) onto
    `rgb`, all at once: one PIL rectangle per patch took ~0.25 s for a slide's 8,000 patches, in the parent, while
    the workers were reading."""
    h, w = rgb.shape[:2]
    x0, y0 = np.floor(corners[:, 0]).astype(int), np.floor(corners[:, 1]).astype(int)
    s = max(1, round(side))
    run = np.arange(s + 1)
    along_x, along_y = (x0[:, None] + run).ravel(), (y0[:, None] + run).ravel()
    rows = np.concatenate([np.repeat(y0, s + 1), np.repeat(y0 + s, s + 1), along_y, along_y])
    cols = np.concatenate([along_x, along_x, np.repeat(x0, s + 1), np.repeat(x0 + s, s + 1)])
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    rgb[rows[inside], cols[inside]] = colour


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
    rgb = np.array(slide_thumb[..., :3])  # a copy, drawn on
    th, tw = rgb.shape[:2]
    legend = [("tissue", CONTOUR_COLOUR), ("patches", GRID_COLOUR)]
    if pen is not None and pen.any():
        shade = _scaled(pen, (th, tw))
        rgb[shade] = (0.5 * rgb[shade] + 0.5 * np.array(PEN_COLOUR)).astype(np.uint8)
        legend.append(("pen / black", PEN_COLOUR))
    corners = (plan.coords - np.asarray(origin)) / thumb_downsample
    _outline_squares(rgb, corners.reshape(-1, 2), plan.patch_size_level0 / thumb_downsample, GRID_COLOUR)
    img = Image.fromarray(rgb)  # the contours go on top of the grid
    draw = ImageDraw.Draw(img)
    line = max(1, round(max(th, tw) / 800))
    _contours(draw, mask, (th, tw), CONTOUR_COLOUR, line)
    if roi is not None:
        _contours(draw, roi, (th, tw), ROI_COLOUR, line + 1)
        legend.append(("ROI", ROI_COLOUR))
    # The legend goes on a white strip below the picture, where it hides nothing.
    card = Image.new("RGB", (tw, th + LEGEND_HEIGHT), (255, 255, 255))
    card.paste(img, (0, 0))
    draw = ImageDraw.Draw(card)
    for i, (label, colour) in enumerate(legend):
        x, y = 4 + 90 * i, th + 3
        draw.rectangle([x, y, x + 9, y + 9], fill=colour)
        draw.text((x + 13, y - 1), label, fill=(0, 0, 0))
    card.save(out_png)
