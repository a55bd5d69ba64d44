"""Pictures of what the diffusion model makes: rows of uint8 images on a white canvas, with optional captions."""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

GAP = 4
CAPTION = 12  # px of caption band above a row


def image_rows(rows: Sequence[Sequence[np.ndarray]], captions: Sequence[Sequence[str]] | None = None) -> Image.Image:
    """One row per list of uint8 [S, S, 3] images (rows may differ in length), GAP px apart.

    captions[r][c] (optional) is printed above image c of row r: e.g. "source", "view 1", "a=0.25".
    """
    size = max(img.shape[0] for row in rows for img in row)
    band = CAPTION if captions else 0
    width = max(len(row) for row in rows) * (size + GAP) + GAP
    height = len(rows) * (size + GAP + band) + GAP
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = GAP + r * (size + GAP + band)
        for c, img in enumerate(row):
            x = GAP + c * (size + GAP)
            text = captions[r][c] if captions and c < len(captions[r]) else ""
            if text and draw.textlength(text) <= size + GAP:  # a caption wider than its image is left out
                draw.text((x, y), text, fill="black")
            canvas.paste(Image.fromarray(np.asarray(img, dtype=np.uint8)), (x, y + band))
    return canvas
