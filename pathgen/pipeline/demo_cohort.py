"""A synthetic but real cohort: pyramidal Aperio SVS slides that OpenSlide opens, plus labels.csv.

Tissue is procedural H&E (`demo_tissue`: no download) cut into irregular regions on glass: epithelium and
stroma, and on "positive" slides a few lesion discs whose nuclei are larger, pleomorphic and disordered but
whose colour distribution is the normal tissue's, so only morphology tells them apart (for the MIL stage and
the demo's kNN check). Each slide has its own tissue and its own stain and scanner white balance. Everything
is drawn from one seed, and slides are written tile by tile, so memory stays bounded even for a 40,000 x
30,000 benchmark slide.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from pathgen.pipeline.demo_tissue import MORPHOLOGIES, PERIOD, TEXEL, Stain, stain_maps

TileFn = Callable[[int, int, int, int], np.ndarray]

_GLASS = (244, 243, 240)
# Grid of the low-frequency field that shapes the tissue regions (cells along the long side).
_FIELD_CELLS = 64
_GLASS_PERIOD = 1024  # the glass noise repeats every _GLASS_PERIOD level-0 pixels
_COHORT_STREAM = 0  # random stream of the cohort's slide seeds ([seed, stream]); demo_patches uses another


# --------------------------------------------------------------------------- SVS writing


def _aperio_description(
    width: int, height: int, tile_size: int, mpp: float | None, magnification: float | None, quality: int
) -> str:
    # OpenSlide recognises Aperio files by this prefix and reads "key = value" pairs after the first '|':
    # MPP becomes openslide.mpp-x/y and AppMag becomes openslide.objective-power. Either may be left out
    # (None) to mimic slides with incomplete metadata.
    fields = [f"AppMag = {magnification:g}"] if magnification else []
    fields += [f"MPP = {mpp:g}"] if mpp else []
    head = f"Aperio Image Library v12.0.0 pathgen\r\n{width}x{height} [0,0 {width}x{height}] ({tile_size}x{tile_size})"
    return "|".join([f"{head} JPEG/RGB Q={quality}", *fields])


def _pad_tile(tile: np.ndarray, tile_size: int) -> np.ndarray:
    """Edge tiles are padded with white glass to the full tile shape that tifffile expects."""
    h, w = tile.shape[:2]
    if h == tile_size and w == tile_size:
        return np.ascontiguousarray(tile)
    out = np.full((tile_size, tile_size, 3), 255, np.uint8)
    out[:h, :w] = tile
    return out


def _tiles(read: Callable[[int, int, int, int], np.ndarray], width: int, height: int, tile_size: int) -> Iterator:
    """Yield the tiles of a width x height image in TIFF order (row-major), padded to tile_size."""
    for y in range(0, height, tile_size):
        for x in range(0, width, tile_size):
            w, h = min(tile_size, width - x), min(tile_size, height - y)
            yield _pad_tile(read(x, y, w, h), tile_size)


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by an integer factor with area averaging; a partial block at the edge averages what it has."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).reduce(factor))


def write_svs(
    path: str | Path,
    width: int,
    height: int,
    tile_fn: TileFn,
    mpp: float | None,
    magnification: float | None,
    tile_size: int = 256,
    quality: int = 85,
    level_factor: int = 4,
    min_level_side: int | None = None,
) -> None:
    """Write a pyramidal, JPEG-tiled Aperio SVS with `tile_fn(x, y, w, h) -> uint8 RGB [h, w, 3]` as level 0.

    Levels shrink by `level_factor` (Aperio uses 4) until the next one would be smaller than
    `min_level_side` (default: one tile) on its long side. Level 0 is streamed tile by tile; each coarser
    level is built from a disk-backed (memmap) copy of the level above, so RAM use does not grow with
    the slide. A small stripped thumbnail sits in directory 1, where Aperio and OpenSlide expect it.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tile_size % level_factor:  # each tile must shrink to whole pixels of the level below
        raise ValueError(f"tile_size {tile_size} is not a multiple of level_factor {level_factor}")
    min_level_side = min_level_side or tile_size
    sizes = [(width, height)]
    while max(sizes[-1]) // level_factor >= min_level_side:
        w, h = sizes[-1]
        sizes.append((math.ceil(w / level_factor), math.ceil(h / level_factor)))

    common = dict(
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
        metadata=None,  # no tifffile JSON: the description must stay Aperio's
    )
    desc = _aperio_description(width, height, tile_size, mpp, magnification, quality)
    partial = path.with_name(f".{path.name}.partial")  # renamed into place only once complete
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".svs-") as tmp:
        # Levels 1.. are filled as a side effect of streaming the level above: keep them on disk.
        below = [
            np.lib.format.open_memmap(Path(tmp) / f"level{i}.npy", mode="w+", dtype=np.uint8, shape=(h, w, 3))
            for i, (w, h) in enumerate(sizes[1:], start=1)
        ]

        def level_reader(level: int) -> Callable[[int, int, int, int], np.ndarray]:
            def read(x: int, y: int, w: int, h: int) -> np.ndarray:
                tile = tile_fn(x, y, w, h) if level == 0 else below[level - 1][y : y + h, x : x + w]
                if level + 1 < len(sizes):  # feed the next level down, one reduced tile at a time
                    small = _block_mean(np.ascontiguousarray(tile), level_factor)
                    sy, sx = y // level_factor, x // level_factor
                    below[level][sy : sy + small.shape[0], sx : sx + small.shape[1]] = small
                return tile

            return read

        # JPEG output is far smaller than raw pixels, so classic TIFF's 4 GiB limit only binds beyond this.
        with tifffile.TiffWriter(partial, bigtiff=width * height * 3 > 2**32) as tif:
            for level, (w, h) in enumerate(sizes):
                tif.write(
                    _tiles(level_reader(level), w, h, tile_size),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile_size, tile_size),
                    description=desc if level == 0 else f"Aperio Image Library pathgen\r\n{w}x{h} level {level}",
                    subfiletype=0 if level == 0 else 1,
                    **common,
                )
                if level == 0:  # level 1 is complete now; directory 1 is where Aperio keeps the thumbnail
                    thumb = _thumbnail(below[0] if below else tile_fn(0, 0, width, height))
                    note = f"Aperio Image Library pathgen\r\n{width}x{height} -> thumbnail"
                    tif.write(thumb, description=note, **common)
    partial.replace(path)


def _thumbnail(image: np.ndarray, side: int = 768) -> np.ndarray:
    """A small overview, subsampled first so a memmapped 10,000 px level is never loaded whole."""
    from PIL import Image

    step = max(1, max(image.shape[:2]) // (2 * side))
    im = Image.fromarray(np.ascontiguousarray(image[::step, ::step]))
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(im)


# --------------------------------------------------------------------------- slides


@cache
def _glass_noise() -> np.ndarray:
    """A fixed periodic +-2 grey-level noise, stored 2x2 so that a window of up to one period is a plain slice."""
    noise = np.random.default_rng(0).integers(-2, 3, (_GLASS_PERIOD, _GLASS_PERIOD, 1), dtype=np.int16)
    return np.tile(noise, (2, 2, 1))


def _periodic_window(tex2: np.ndarray, period: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The [h, w] window at (x, y) of a texture repeating every `period` px, stored 2x2 as `tex2`."""
    x0, y0 = x % period, y % period
    if w <= period and h <= period:
        return tex2[y0 : y0 + h, x0 : x0 + w]
    return tex2[np.ix_((np.arange(h) + y0) % period, (np.arange(w) + x0) % period)]


def _interp_weights(start: int, n: int, cell: float, size: int) -> tuple[int, np.ndarray]:
    """Linear-interpolation weights [n, k] from grid nodes lo..lo+k-1 to pixels start..start+n-1."""
    g = (np.arange(start, start + n) + 0.5) / cell
    i0 = np.clip(np.floor(g).astype(np.int64), 0, size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    frac = np.clip(g - i0, 0.0, 1.0)
    lo = int(i0.min())
    weights = np.zeros((n, int(i1.max()) - lo + 1), np.float32)
    rows = np.arange(n)
    np.add.at(weights, (rows, i0 - lo), 1.0 - frac)
    np.add.at(weights, (rows, i1 - lo), frac)
    return lo, weights


@dataclass
class SyntheticSlide:
    """A procedural H&E slide: tissue regions on glass, epithelium and stroma, optional lesion discs.

    The layout (where tissue is, where it is stroma rather than epithelium) is a smooth random field on a coarse
    grid, bilinearly upsampled per tile, so a tile costs the same whatever the slide size, and the same seed
    always gives the same pixels. The tissue itself is `demo_tissue`'s: stain maps of the slide's own seed in
    every morphology, rendered with the slide's own `Stain` (one lab, one scanner); lesions differ from normal
    tissue in their nuclei, not in their colour.
    """

    width: int
    height: int
    seed: int = 0
    positive: bool = False
    blank: bool = False
    tissue_cover: float = 0.45
    lesion_radius: tuple[float, float] = (0.07, 0.12)  # lesion disc radii, as fractions of the short side
    stain: Stain | None = None  # default: drawn from the seed
    layout: np.ndarray = field(init=False, repr=False)
    kinds: np.ndarray = field(init=False, repr=False)  # > 0: stroma, < 0: epithelium
    cell: float = field(init=False)  # level-0 px per layout node
    offset: tuple[int, int] = field(init=False)  # where this slide starts in its periodic textures (level-0 px)
    lesions: list[tuple[float, float, float]] = field(init=False, default_factory=list)  # (cx, cy, r) level 0

    def __post_init__(self) -> None:
        from scipy import ndimage

        rng = np.random.default_rng(self.seed)
        self.cell = max(self.width, self.height) / _FIELD_CELLS
        gh, gw = math.ceil(self.height / self.cell) + 2, math.ceil(self.width / self.cell) + 2
        noise = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), sigma=4.0, mode="wrap")
        # Fade to glass at the borders so tissue sits on the slide like a real section.
        yy, xx = np.meshgrid(np.linspace(-1, 1, gh), np.linspace(-1, 1, gw), indexing="ij")
        noise = noise / noise.std() - 3.0 * np.maximum(np.abs(xx), np.abs(yy)) ** 4
        thr = np.quantile(noise, 1.0 - self.tissue_cover)
        self.layout = (noise - thr).astype(np.float32)  # > 0 is tissue
        kinds = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), sigma=3.0, mode="wrap")
        self.kinds = (kinds / kinds.std()).astype(np.float32)
        self.offset = tuple(int(v) for v in rng.integers(0, TEXEL * PERIOD, 2))
        if self.stain is None:
            self.stain = Stain.draw(rng)
        if self.positive:
            self.lesions = self._place_lesions(rng)

    def _place_lesions(self, rng: np.random.Generator) -> list[tuple[float, float, float]]:
        """3-5 discs centred deep inside tissue (field well above zero)."""
        deep = np.argwhere(self.layout > np.quantile(self.layout[self.layout > 0], 0.5))
        deep = deep[(deep[:, 0] * self.cell < self.height) & (deep[:, 1] * self.cell < self.width)]  # on the slide
        n = int(rng.integers(3, 6))
        side = min(self.width, self.height)
        picks = deep[rng.choice(len(deep), size=n, replace=False)]
        return [
            ((gx + 0.5) * self.cell, (gy + 0.5) * self.cell, float(rng.uniform(*self.lesion_radius) * side))
            for gy, gx in picks
        ]

    def _field_at(self, grid: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Bilinear upsampling of a coarse-grid field over a region, as two small matrix products."""
        ry, wy = _interp_weights(y, h, self.cell, grid.shape[0])
        rx, wx = _interp_weights(x, w, self.cell, grid.shape[1])
        return wy @ grid[ry : ry + wy.shape[1], rx : rx + wx.shape[1]] @ wx.T

    @cached_property
    def textures(self) -> dict[str, np.ndarray]:
        """{morphology: uint8 RGB [2 PERIOD, 2 PERIOD, 3]}: this slide's tissue in texels, stored 2x2."""
        maps = stain_maps(self.seed, PERIOD)
        names = MORPHOLOGIES if self.positive else MORPHOLOGIES[:2]
        return {name: np.tile(self.stain.render(*maps[name]), (2, 2, 1)) for name in names}

    def _texture(self, name: str, x: int, y: int, w: int, h: int) -> np.ndarray:
        """float32 [h, w, 3] of a morphology over a level-0 region: texels repeated TEXEL x TEXEL."""
        x0, y0 = x + self.offset[0], y + self.offset[1]
        tx, ty = x0 // TEXEL, y0 // TEXEL
        tw, th = -(-(x0 + w) // TEXEL) - tx, -(-(y0 + h) // TEXEL) - ty
        texels = _periodic_window(self.textures[name], PERIOD, tx, ty, tw, th)
        up = texels.repeat(TEXEL, axis=0).repeat(TEXEL, axis=1)
        return up[y0 - ty * TEXEL : y0 - ty * TEXEL + h, x0 - tx * TEXEL : x0 - tx * TEXEL + w].astype(np.float32)

    def tile(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB [h, w, 3] of the level-0 region at (x, y)."""
        out = self._glass(x, y, w, h)
        if self.blank:
            return out
        alpha = self.tissue_mask(x, y, w, h)
        if not alpha.any():
            return out
        stroma = self.stroma_mask(x, y, w, h)[..., None]
        tissue = self._texture("epithelium", x, y, w, h) * (1 - stroma) + self._texture("stroma", x, y, w, h) * stroma
        inside = self.lesion_mask(x, y, w, h)
        if inside.any():
            tissue += (self._texture("lesion", x, y, w, h) - tissue) * inside[..., None]
        a = alpha[..., None]
        return (tissue * a + out * (1 - a)).round().astype(np.uint8)

    def tissue_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Ground truth: float [h, w] in [0, 1], how much of each level-0 pixel is tissue (vs glass)."""
        if self.blank:
            return np.zeros((h, w), np.float32)
        return np.clip(self._field_at(self.layout, x, y, w, h) * 4.0, 0.0, 1.0)  # soft edge over ~1/4 field unit

    def stroma_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Ground truth: float [h, w] in [0, 1], how much of the normal tissue is stroma (the rest is epithelium)."""
        # a sharp border: blending two textures would lower the contrast of normal tissue, a colour cue
        return np.clip(self._field_at(self.kinds, x, y, w, h) * 30.0 + 0.5, 0.0, 1.0)

    def lesion_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Ground truth: float [h, w] in [0, 1], how much of each level-0 pixel shows the lesion texture.

        (Multiply by `tissue_mask` for lesion on tissue; lesions sit deep inside tissue, so the two rarely differ.)
        """
        inside = np.zeros((h, w), np.float32)
        near = [
            (cx, cy, r) for cx, cy, r in self.lesions if abs(cx - x - w / 2) < r + w and abs(cy - y - h / 2) < r + h
        ]
        if near:
            dx = np.arange(x, x + w, dtype=np.float32)[None, :]
            dy = np.arange(y, y + h, dtype=np.float32)[:, None]
            for cx, cy, r in near:
                d = np.sqrt((dx - cx) ** 2 + (dy - cy) ** 2) / r
                inside = np.maximum(inside, np.clip((1.0 - d) * 40.0, 0.0, 1.0))  # sharp rim, 1/40 of r
        return inside

    def _glass(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Slightly warm, slightly noisy glass under this slide's scanner light (and a fair test for Otsu).

        The noise is a fixed periodic texture, so a region renders the same whether drawn whole or in tiles.
        """
        noise = _periodic_window(_glass_noise(), _GLASS_PERIOD, x + self.offset[0], y + self.offset[1], w, h)
        glass = np.round(np.array(_GLASS) * np.array(self.stain.white)).astype(np.int16)
        return (glass + noise).astype(np.uint8)


# --------------------------------------------------------------------------- public entry points


def slide_seeds(seed: int, n_slides: int, stream: int) -> list[int]:
    """`n_slides` slide seeds drawn from random stream `stream` of `seed` (the cohort and the held-out labelled
    slides use different streams, so they never share a slide)."""
    return [int(s) for s in np.random.default_rng([seed, stream]).integers(2**31, size=n_slides)]


def cohort_slide_seeds(seed: int, n_slides: int) -> list[int]:
    """The slide seeds of `make_demo_cohort(seed=seed)`; `demo_patches` draws its held-out slides elsewhere."""
    return slide_seeds(seed, n_slides, _COHORT_STREAM)


def make_demo_cohort(
    out_dir: str | Path,
    n_slides: int = 6,
    seed: int = 0,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.25,
) -> Path:
    """Write `<out_dir>/slides/slide_NNN.svs` and `<out_dir>/labels.csv`; return the labels.csv path.

    Labels are balanced (positive first half, then shuffled by the seed). The `slide` column holds the
    slide path relative to labels.csv, so the CSV itself is a valid slide list for `pathgen tile`; `slide_id` is
    the name its store and feature files get, so it is also a labels file for `pathgen mil train`.
    """
    out_dir = Path(out_dir)
    positive = np.arange(n_slides) < (n_slides + 1) // 2
    np.random.default_rng(seed).shuffle(positive)
    rows = []
    for i, (pos, slide_seed) in enumerate(zip(positive, cohort_slide_seeds(seed, n_slides), strict=True)):
        rel = Path("slides") / f"slide_{i:03d}.svs"
        synth = SyntheticSlide(width, height, seed=slide_seed, positive=bool(pos))
        write_svs(out_dir / rel, width, height, synth.tile, mpp=mpp, magnification=round(10.0 / mpp, 2))
        rows.append({"slide": rel.as_posix(), "slide_id": rel.stem, "label": "positive" if pos else "negative"})
    labels = out_dir / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide", "slide_id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return labels


def make_large_slide(path: str | Path, width: int = 40000, height: int = 30000, seed: int = 0) -> Path:
    """A big 40x (0.25 mpp) positive slide for benchmarks, streamed to disk tile by tile."""
    synth = SyntheticSlide(width, height, seed=seed, positive=True)
    write_svs(path, width, height, synth.tile, mpp=0.25, magnification=40)
    return Path(path)


def make_blank_slide(path: str | Path, width: int = 1024, height: int = 768, mpp: float = 0.25) -> Path:
    """An all-glass slide (no tissue): the tiler must give it zero patches."""
    synth = SyntheticSlide(width, height, blank=True)
    write_svs(path, width, height, synth.tile, mpp=mpp, magnification=round(10.0 / mpp, 2))
    return Path(path)
