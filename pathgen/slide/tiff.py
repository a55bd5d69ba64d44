"""Region reads straight from the tiles of a tiled TIFF pyramid (Aperio SVS, generic tiled TIFF).

OpenSlide decodes each JPEG tile into ARGB, paints it through cairo and hands back RGBA; for a tiler that
wants RGB patches most of that is overhead. Here tifffile parses the TIFF and decodes each tile (libjpeg-turbo
through imagecodecs for JPEG, with the JPEGTables and colour-space rules tifffile applies), and the tiles of a
region are copied into one RGB array: ~0.5 ms of CPU per 256 px patch against ~1.4-2 ms for
`openslide.read_region` on the same tiles (benchmarks/README.md).

The pyramid itself (levels, downsamples, mpp) still comes from OpenSlide, so a slide looks the same whichever
reader decodes it. `TiffRegions.open` refuses, with the reason, every slide whose layout or colour handling it
cannot reproduce exactly (`Unsupported`); the caller then reads that slide with OpenSlide.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

# OpenSlide formats whose levels are plain tiled TIFF pages, one page per level, nothing composited.
FORMATS = {"aperio", "generic-tiff"}
# TIFF compressions decoded here. Lossless ones decode to the same pixels by any correct decoder; JPEG is
# libjpeg-turbo on both sides and is checked against OpenSlide on every slide (see `probe`). JPEG 2000 (Aperio
# 33003/33005) is not here: OpenSlide converts its YCbCr itself, with its own rounding.
COMPRESSIONS = {1: "none", 5: "LZW", 7: "JPEG", 8: "deflate", 32946: "deflate", 32773: "PackBits", 50000: "zstd"}
_PHOTOMETRIC = {2: "RGB", 6: "YCbCr"}
# Decoded tiles a region used only in part, kept for the next region (the next patch row, when patches straddle
# tile rows, e.g. 256 px patches on Aperio's 240 px tiles). 64 MiB holds more than a tile row of a 100k px level.
TILE_CACHE_BYTES = 64 * 2**20


class Unsupported(Exception):
    """This slide cannot be read here with OpenSlide's pixels; the message says why (one line)."""


def level_xy(x: float, downsample: float) -> int:
    """The pixel of a level (downsample `downsample`) holding level-0 coordinate x: the nearest one.

    OpenSlide interpolates between pixels when x / downsample is not whole; reading whole pixels instead keeps
    every patch sharp and the same whether it is read alone or cut from a region.
    """
    return int(math.floor(x / downsample + 0.5))


class TiffRegions:
    """Tile-level reader of the pages behind OpenSlide's levels. `read(level, x, y, w, h)` in level pixels."""

    def __init__(self, tif, pages: list):
        self._tif = tif
        self._fh = tif.filehandle
        self.pages = pages
        self._decoders = [page.decode for page in pages]  # tifffile builds one decode closure per page
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0

    @classmethod
    def open(cls, path: str | Path, fmt: str | None, level_dimensions: list[tuple[int, int]]) -> TiffRegions:
        """Map each OpenSlide level to its tiled TIFF page; Unsupported(reason) if any level does not qualify."""
        import tifffile

        if fmt not in FORMATS:
            raise Unsupported(f"{fmt or 'plain image'} slides are read by OpenSlide")
        try:
            tif = tifffile.TiffFile(path)
        except Exception as err:  # noqa: BLE001 - OpenSlide opened it; tifffile's view of it is just not usable
            raise Unsupported(f"tifffile cannot parse it ({type(err).__name__})") from None
        try:
            tiled = [p for p in tif.pages if p.is_tiled]
            pages = []
            for level, (w, h) in enumerate(level_dimensions):
                match = [p for p in tiled if (p.imagewidth, p.imagelength) == (w, h)]
                if not match:
                    raise Unsupported(f"level {level} ({w}x{h}) is not a tiled TIFF page")
                pages.append(_check_page(match[0], level))
        except BaseException:
            tif.close()
            raise
        return cls(tif, pages)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB [h, w, 3] of `level` with top-left (x, y) in that level's pixels; white beyond its edges."""
        page = self.pages[level]
        out = np.full((h, w, 3), 255, np.uint8)
        lw, lh = page.imagewidth, page.imagelength
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 >= x1 or y0 >= y1:
            return out
        tw, th = page.tilewidth, page.tilelength
        across = -(-lw // tw)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                ax, ay = tx * tw, ty * th  # tile origin
                # Keep a tile that reaches past this region inside the level: the next region may need the rest.
                keep = min(ax + tw, lw) > x1 or min(ay + th, lh) > y1
                tile = self._tile(level, ty * across + tx, keep)
                sx0, sy0, sx1, sy1 = max(ax, x0), max(ay, y0), min(ax + tw, x1), min(ay + th, y1)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ay : sy1 - ay, sx0 - ax : sx1 - ax]
        return out

    def _tile(self, level: int, index: int, keep: bool) -> np.ndarray:
        """Decoded tile `index` of `level` as [th, tw, 3], from the cache or the file (cached if `keep`)."""
        key = (level, index)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        page = self.pages[level]
        self._fh.seek(page.dataoffsets[index])
        data = self._fh.read(page.databytecounts[index])
        tile = self._decoders[level](data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0]
        tile = tile.reshape(tile.shape[-3:])  # (1, th, tw, 3) -> (th, tw, 3)
        if keep:
            self._cache[key] = tile
            self._cache_bytes += tile.nbytes
            while self._cache_bytes > TILE_CACHE_BYTES:
                self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return tile

    def close(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0
        self._tif.close()


def _check_page(page, level: int):
    """The page if its pixels are 8-bit RGB tiles in a compression decoded here; else Unsupported."""
    where = f"level {level}"
    if page.compression not in COMPRESSIONS:
        name = getattr(page.compression, "name", page.compression)
        raise Unsupported(f"{where}: {name} tiles")
    if page.photometric not in _PHOTOMETRIC or page.samplesperpixel != 3 or page.extrasamples:
        name = getattr(page.photometric, "name", page.photometric)
        raise Unsupported(f"{where}: {name} with {page.samplesperpixel} samples per pixel (fast path: 3-sample RGB)")
    if page.bitspersample != 8 or page.planarconfig != 1 or page.imagedepth != 1:
        raise Unsupported(f"{where}: not 8-bit interleaved 2-D tiles")
    if page.photometric == 6 and page.compression != 7:
        raise Unsupported(f"{where}: YCbCr tiles outside JPEG")
    if not len(page.databytecounts) or not np.all(np.asarray(page.databytecounts) > 0):
        raise Unsupported(f"{where}: sparse (missing) tiles")
    return page
