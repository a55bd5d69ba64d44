"""Open whole-slide images behind one small interface, with a resolution you can trust.

OpenSlide (through openslide-python + openslide-bin) reads SVS, NDPI, MRXS, SCN, generic tiled TIFF and
DICOM; plain PNG/JPEG images open as one-level slides via its PIL-backed ImageSlide. The default reader,
"auto", decodes the tiles of Aperio SVS and generic tiled TIFF slides with tifffile instead (pathgen.slide.tiff:
the same pixels, several times cheaper) and falls back to OpenSlide, with the reason in `reader_notice`, for any
slide whose layout or colour handling it cannot reproduce. TIAToolbox's WSIReader is an optional backend.
Microns per pixel come from, in order: the caller's override, the slide's recorded mpp, its objective power
(10 / power), the caller's fallback, else a SlideError: a silently wrong mpp is the most common way tiling goes
wrong, so we never guess. A recorded mpp outside 0.05-20 um/px is a default (TIFF's 72 dpi is 352.8 um/px), not
a measurement, and counts as missing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pathgen.errors import SlideError
from pathgen.slide.tiff import FORMATS as TIFF_FORMATS
from pathgen.slide.tiff import TiffRegions, Unsupported, level_xy

NO_MPP = "no microns-per-pixel in metadata or objective power; pass --slide-mpp or an mpp column"
# Vendor formats OpenSlide reads that are never plain images; .tif/.tiff may be either, so they may fall back.
WSI_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm"}
_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}
MPP_RANGE = (0.05, 20.0)  # um/px a slide scanner can produce; outside it a recorded value is a default or junk
_POWER_RANGE = (1.0, 200.0)
_LEVEL_TOLERANCE = 0.01  # a level 1% coarser than asked still counts (pyramid downsamples are rarely exact)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _OpenSlideBackend:
    """openslide.OpenSlide for real slides, openslide.ImageSlide (PIL) for plain images."""

    name = "openslide"

    def __init__(self, path: Path):
        import openslide

        fmt = openslide.OpenSlide.detect_format(str(path))
        self._image = None
        if fmt is None and path.suffix.lower() in WSI_SUFFIXES:
            # Never let PIL half-read a slide file (e.g. level 0 of a truncated SVS): fail clearly instead.
            raise SlideError(path, f"OpenSlide does not recognise this {path.suffix} file (truncated or corrupt?)")
        try:
            if fmt:
                self.osr = openslide.OpenSlide(str(path))
            else:
                self._image = _load_image(path)
                self.osr = openslide.ImageSlide(self._image)
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
            raise SlideError(path, f"OpenSlide cannot read this {fmt} file: {_one_line(err)}") from None
        self.format = fmt or f"image/{self._image.format.lower()}"
        props = self.osr.properties
        self.level_dimensions = [tuple(map(int, d)) for d in self.osr.level_dimensions]
        self.level_downsamples = [float(d) for d in self.osr.level_downsamples]
        self.metadata_mpp = _mean_mpp(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
        self.objective_power = _positive_float(props.get("openslide.objective-power"))
        self.bounds = _bounds(props, self.level_dimensions[0])

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        img = self.osr.read_region(xy, level, size)  # RGBA, straight alpha; transparent where nothing was scanned
        if img.getchannel("A").getextrema()[0] < 255:  # one band, not four
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
        return np.asarray(img.convert("RGB"))  # in PIL's C code: ~5x cheaper than compositing in numpy

    def close(self) -> None:
        self.osr.close()
        if self._image is not None:
            self._image.close()


class _TiffBackend:
    """OpenSlide's view of a tiled TIFF slide (levels, mpp, format), with its tiles decoded by tifffile."""

    name = "tifffile"

    def __init__(self, path: Path, osr: _OpenSlideBackend):
        self._osr = osr
        for key in ("format", "level_dimensions", "level_downsamples", "metadata_mpp", "objective_power", "bounds"):
            setattr(self, key, getattr(osr, key))
        self.tiles = TiffRegions.open(path, osr.format, osr.level_dimensions)
        try:
            self._probe()
        except BaseException:
            self.tiles.close()
            raise

    def _probe(self) -> None:
        """Unsupported unless one tile per level decodes to exactly OpenSlide's pixels.

        The checks in TiffRegions.open cover the layout; this covers decoder and colour-space quirks no tag
        reveals. Level 0 is checked at its centre (tissue, usually), coarser levels at their origin, the one
        place where OpenSlide does not interpolate a level whose downsample is not whole.
        """
        for level, page in enumerate(self.tiles.pages):
            (w, h), ds = self.level_dimensions[level], self.level_downsamples[level]
            tw, th = min(page.tilewidth, w), min(page.tilelength, h)
            x, y = ((w // 2) // tw * tw, (h // 2) // th * th) if level == 0 else (0, 0)
            try:
                ours = self.tiles.read(level, x, y, tw, th)
            except Exception as err:  # noqa: BLE001 - a damaged tile: OpenSlide then reports it on read, or copes
                raise Unsupported(f"level {level}: tifffile cannot decode a tile ({_one_line(err)})") from None
            theirs = self._osr.read_region((round(x * ds), round(y * ds)), level, (tw, th))  # RGB on white
            if not np.array_equal(ours, theirs):
                diff = int(np.abs(ours.astype(np.int16) - theirs).max())
                raise Unsupported(f"level {level}: tifffile's pixels differ from OpenSlide's (by up to {diff})")

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        return self.tiles.read(level, level_xy(xy[0], ds), level_xy(xy[1], ds), size[0], size[1])

    def close(self) -> None:
        self.tiles.close()
        self._osr.close()


def _load_image(path: Path):
    """Open and decode a plain image with PIL now, so truncation or a non-image fails at open time."""
    from PIL import Image, UnidentifiedImageError

    img = None
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise SlideError(path, "not a slide or image that OpenSlide or PIL can read") from None
    except Image.DecompressionBombError:
        raise SlideError(path, "plain image too large for PIL; convert it to a pyramidal TIFF") from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt image data
        kind = getattr(img, "format", None) or "image"
        if img is not None:
            img.close()
        raise SlideError(path, f"corrupt or truncated {kind} file: {_one_line(err)}") from None
    if img.mode not in _EIGHT_BIT_MODES:  # 16-bit/float images would be clipped to white, not read
        img.close()
        raise SlideError(path, f"{img.mode} images are not supported; convert to 8-bit RGB")
    return img


class _TiatoolboxBackend:
    """tiatoolbox.wsicore.WSIReader, for formats or behaviour OpenSlide lacks (optional extra)."""

    name = "tiatoolbox"

    def __init__(self, path: Path):
        try:
            from tiatoolbox.wsicore.wsireader import WSIReader
        except ImportError:
            raise SlideError(path, "reader 'tiatoolbox' is not installed; pip install pathgen[tiatoolbox]") from None
        try:
            self.wsi = WSIReader.open(path)
            info = self.wsi.info
        except Exception as err:  # tiatoolbox raises many exception types for unreadable files
            raise SlideError(path, f"tiatoolbox cannot open: {_one_line(err)}") from None
        self.format = f"tiatoolbox/{type(self.wsi).__name__}"
        self.level_dimensions = [tuple(map(int, d)) for d in info.level_dimensions]
        self.level_downsamples = [float(d) for d in info.level_downsamples]
        mpp = info.mpp
        self.metadata_mpp = _mean_mpp(*mpp) if mpp is not None else None
        self.objective_power = _positive_float(info.objective_power)
        self.bounds = (0, 0, *self.level_dimensions[0])

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        # Baseline (level-0) location, output size in pixels of `level`, like OpenSlide's read_region;
        # beyond the slide edge, pad with white glass.
        region = self.wsi.read_rect(xy, size, resolution=level, units="level", pad_constant_values=255)
        return np.asarray(region)

    def close(self) -> None:
        close = getattr(self.wsi, "close", None)
        if close:
            close()


# "auto": tifffile where it reproduces OpenSlide's pixels, OpenSlide for everything else.
# "tifffile": the fast path or a SlideError. "openslide": OpenSlide only (the tiler then also reads patch by patch).
READERS = ("auto", "tifffile", "openslide", "tiatoolbox")
OPTIONAL_READERS = {"tiatoolbox": "tiatoolbox"}  # reader -> the module it needs, not a pathgen dependency


def check_reader(reader: str) -> str | None:
    """Why `reader` cannot be used here (unknown, or its package not installed), or None if it can."""
    import importlib.util

    if reader not in READERS:
        return f"--reader must be one of {', '.join(READERS)}, got {reader!r}"
    module = OPTIONAL_READERS.get(reader)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"reader {reader!r} needs {module}, which is not installed; pip install pathgen[{module}]"
    return None


def _open_backend(path: Path, reader: str):
    """(backend, notice): the backend that decodes this slide and, when "auto" fell back, why."""
    if reader == "tiatoolbox":
        return _TiatoolboxBackend(path), None
    osr = _OpenSlideBackend(path)
    if reader == "openslide" or (reader == "auto" and osr.format not in TIFF_FORMATS):
        return osr, None  # not a TIFF-family slide: OpenSlide is the designed path, nothing to report
    try:
        return _TiffBackend(path, osr), None
    except Unsupported as why:
        if reader == "tifffile":
            osr.close()
            raise SlideError(path, f"reader 'tifffile' cannot read this slide: {why}") from None
        return osr, f"read by OpenSlide: {why}"
    except BaseException:
        osr.close()
        raise


def _positive_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _bounds(props, dimensions: tuple[int, int]) -> tuple[int, int, int, int]:
    """The scanned area (x, y, w, h) in level-0 pixels: OpenSlide's bounds-* properties (MRXS, SCN, ...), clipped to
    the slide; the whole slide where they are absent or nonsense."""
    width, height = dimensions
    try:
        x, y, w, h = (int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))
    except (KeyError, ValueError):
        return 0, 0, width, height
    x0, y0 = min(max(0, x), width), min(max(0, y), height)
    x1, y1 = min(width, x + w), min(height, y + h)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else (0, 0, width, height)


def _mean_mpp(x: Any, y: Any) -> float | None:
    vals = [v for v in (_positive_float(x), _positive_float(y)) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _in_range(value: float | None, lo_hi: tuple[float, float]) -> float | None:
    return value if value is not None and lo_hi[0] <= value <= lo_hi[1] else None


class Slide:
    """One open whole-slide image. Coordinates are level-0 (x, y); arrays are uint8 RGB, H x W x 3.

    `mpp` overrides whatever the slide records; `fallback_mpp` is used only when it records no usable resolution.
    """

    def __init__(
        self,
        path: str | Path,
        reader: str = "auto",
        mpp: float | None = None,
        fallback_mpp: float | None = None,
    ):
        self.path = Path(path)
        if reader not in READERS:
            raise SlideError(self.path, f"unknown reader {reader!r}; choose one of {', '.join(READERS)}")
        if not self.path.is_file():
            raise SlideError(self.path, "no such file" if not self.path.exists() else "not a file")
        self._backend, self.reader_notice = _open_backend(self.path, reader)
        b = self._backend
        self.requested_reader: str = reader
        self.reader: str = b.name  # what decodes the pixels: tifffile, openslide or tiatoolbox
        self.format: str = b.format
        self.level_dimensions: list[tuple[int, int]] = b.level_dimensions
        self.level_downsamples: list[float] = b.level_downsamples
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.bounds: tuple[int, int, int, int] = b.bounds  # level-0 (x, y, w, h) that was scanned
        self.objective_power: float | None = _in_range(b.objective_power, _POWER_RANGE)
        metadata_mpp = _in_range(b.metadata_mpp, MPP_RANGE)
        for name, value in (("mpp override", mpp), ("fallback mpp", fallback_mpp)):
            if value is not None and _positive_float(value) is None:
                self.close()
                raise SlideError(self.path, f"{name} must be a positive number, got {value!r}")
        if mpp is not None:
            self.mpp, self.mpp_source = float(mpp), "override"
        elif metadata_mpp is not None:
            self.mpp, self.mpp_source = metadata_mpp, "metadata"
        elif self.objective_power is not None:
            self.mpp, self.mpp_source = 10.0 / self.objective_power, "objective-power"  # 40x ~ 0.25 um/px
        elif fallback_mpp is not None:
            self.mpp, self.mpp_source = float(fallback_mpp), "fallback"
        else:
            self.close()
            why = ""
            if b.metadata_mpp is not None:
                why = f" (it records {b.metadata_mpp:.4g} um/px, a default such as 72 dpi, not a measurement)"
            raise SlideError(self.path, NO_MPP + why)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """uint8 RGB [h, w, 3] of `size` (w, h) pixels at `level`, top-left at level-0 `xy`, on white."""
        try:
            region = self._backend.read_region((int(xy[0]), int(xy[1])), int(level), (int(size[0]), int(size[1])))
        except Exception as err:  # a corrupt tile deep inside a slide surfaces only here
            raise SlideError(self.path, f"cannot read region {tuple(xy)} level {level}: {_one_line(err)}") from None
        return np.ascontiguousarray(region, dtype=np.uint8)  # backends composite RGBA on white themselves

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed `downsample` (1% tolerance); level 0 at worst.

        Reading there and shrinking never upsamples, so no detail is invented.
        """
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + _LEVEL_TOLERANCE)]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    def thumbnail(
        self, max_side: int = 2048, region: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, float]:
        """(uint8 RGB thumbnail whose long side is <= max_side, level-0 pixels per thumbnail pixel).

        `region` (level-0 x, y, w, h; default the whole slide) is what the thumbnail shows; its top-left pixel is
        the region's. Reads the best pyramid level in bounded chunks and box-reduces each by an integer factor, so
        memory stays proportional to the thumbnail even for a huge slide with no pyramid.
        """
        from PIL import Image

        rx, ry, width, height = region if region is not None else (0, 0, *self.dimensions)
        want = max(1.0, max(width, height) / max_side)
        level = self.best_level_for_downsample(want)
        ds = self.level_downsamples[level]
        lw, lh = max(1, math.ceil(width / ds)), max(1, math.ceil(height / ds))
        factor = max(1, math.ceil(max(lw, lh) / max_side))
        out = np.full((math.ceil(lh / factor), math.ceil(lw / factor), 3), 255, np.uint8)
        chunk = factor * max(1, 4096 // factor)  # level pixels per chunk side, a multiple of factor
        for cy in range(0, lh, chunk):
            for cx in range(0, lw, chunk):
                w, h = min(chunk, lw - cx), min(chunk, lh - cy)
                pixels = self.read_region((rx + round(cx * ds), ry + round(cy * ds)), level, (w, h))
                small = np.asarray(Image.fromarray(pixels).reduce(factor)) if factor > 1 else pixels
                ty, tx = cy // factor, cx // factor
                out[ty : ty + small.shape[0], tx : tx + small.shape[1]] = small
        return out, ds * factor

    def close(self) -> None:
        backend = getattr(self, "_backend", None)
        if backend is not None:
            backend.close()
            self._backend = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, {self.format}, {w}x{h}, {self.level_count} levels, mpp={self.mpp:.4g})"


def open_slide(
    path: str | Path, reader: str = "auto", mpp: float | None = None, fallback_mpp: float | None = None
) -> Slide:
    """Open a slide (or a plain image) for reading; SlideError with a one-line reason if that is impossible.

    `reader` is one of READERS; `slide.reader` then names what decodes the pixels (see `_open_backend`).
    `mpp` overrides the level-0 microns per pixel the slide records (e.g. a CSV `mpp` column); `fallback_mpp`
    (--slide-mpp) is used only for a slide that records neither an mpp nor an objective power.
    """
    return Slide(path, reader=reader, mpp=mpp, fallback_mpp=fallback_mpp)
