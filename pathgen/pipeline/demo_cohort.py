"""A synthetic but real cohort: pyramidal Aperio SVS slides that OpenSlide opens, plus labels.csv.

Tissue is scikit-image's bundled IHC micrograph (no download), tiled seamlessly and cut into irregular
regions on white glass. "positive" slides also hold a few small regions of a second, clearly distinct
texture (the same micrograph restained through HED colour deconvolution: dense, dark, purple), for the
MIL stage. Everything is drawn from one seed, and slides are written tile by tile, so memory stays
bounded even for a 40,000 x 30,000 benchmark slide.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

TileFn = Callable[[int, int, int, int], np.ndarray]

_GLASS = (244, 243, 240)
# Grid of the low-frequency field that shapes the tissue regions (cells along the long side).
_FIELD_CELLS = 64
_PERIOD = 1024  # textures repeat every _PERIOD level-0 pixels


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


# --------------------------------------------------------------------------- textures and layout


@cache
def _textures() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normal, lesion, glass noise) seamless 1024x1024 textures; the first two from the IHC micrograph.

    Mirroring the 512x512 micrograph makes a tile that repeats without seams. The lesion texture is the
    same tissue restained in HED space: hematoxylin boosted, DAB removed, eosin added, then zoomed
    out 2x so it is both denser and a clearly different colour (dark purple instead of brown/blue).
    """
    from skimage import color, data

    ihc = data.immunohistochemistry()
    normal = _mirror(ihc)
    h = color.rgb2hed(ihc)[..., 0]
    restained = np.stack([h * 3.0 + 0.03, 0.5 * h + 0.02, np.zeros_like(h)], axis=-1)
    lesion = (np.clip(color.hed2rgb(restained), 0, 1) * 255).astype(np.uint8)
    lesion = _mirror(np.asarray(lesion[::2, ::2]))
    lesion = np.tile(lesion, (2, 2, 1))  # back to 1024x1024, twice as many (smaller) nuclei per area
    noise = np.random.default_rng(0).integers(-2, 3, (_PERIOD, _PERIOD, 1), dtype=np.int16)
    # Stored 2x2 so that any window up to one period is a plain slice (a view), not a gather.
    return tuple(np.tile(t, (2, 2, 1)) for t in (normal, lesion, noise))


def _mirror(img: np.ndarray) -> np.ndarray:
    top = np.concatenate([img, img[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def _texture_at(tex2: np.ndarray, x: int, y: int, w: int, h: int, offset: tuple[int, int]) -> np.ndarray:
    """The [h, w] window at (x, y) of a texture repeating every _PERIOD px (stored 2x2 as `tex2`)."""
    x0, y0 = (x + offset[0]) % _PERIOD, (y + offset[1]) % _PERIOD
    if w <= _PERIOD and h <= _PERIOD:
        return tex2[y0 : y0 + h, x0 : x0 + w]
    return tex2[np.ix_((np.arange(h) + y0) % _PERIOD, (np.arange(w) + x0) % _PERIOD)]


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
    """A procedural slide: irregular tissue on glass, optional lesion blobs; `tile` renders any region.

    The layout is a smooth random field on a coarse grid, bilinearly upsampled per tile, so a tile costs
    the same whatever the slide size, and the same seed always gives the same pixels.
    """

    width: int
    height: int
    seed: int = 0
    positive: bool = False
    blank: bool = False
    tissue_cover: float = 0.45
    layout: np.ndarray = field(init=False, repr=False)
    cell: float = field(init=False)  # level-0 px per layout node
    offset: tuple[int, int] = field(init=False)  # where this slide starts in the periodic textures
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
        self.offset = tuple(int(v) for v in rng.integers(0, 1024, 2))
        if self.positive:
            self.lesions = self._place_lesions(rng)

    def _place_lesions(self, rng: np.random.Generator) -> list[tuple[float, float, float]]:
        """2-4 small discs centred deep inside tissue (field well above zero)."""
        deep = np.argwhere(self.layout > np.quantile(self.layout[self.layout > 0], 0.5))
        deep = deep[(deep[:, 0] * self.cell < self.height) & (deep[:, 1] * self.cell < self.width)]  # on the slide
        n = int(rng.integers(2, 5))
        side = min(self.width, self.height)
        picks = deep[rng.choice(len(deep), size=n, replace=False)]
        return [
            ((gx + 0.5) * self.cell, (gy + 0.5) * self.cell, float(rng.uniform(0.05, 0.09) * side))
            for gy, gx in picks
        ]

    def _field_at(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Bilinear upsampling of the layout over a region, as two small matrix products."""
        ry, wy = _interp_weights(y, h, self.cell, self.layout.shape[0])
        rx, wx = _interp_weights(x, w, self.cell, self.layout.shape[1])
        return wy @ self.layout[ry : ry + wy.shape[1], rx : rx + wx.shape[1]] @ wx.T

    def tile(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB [h, w, 3] of the level-0 region at (x, y)."""
        out = self._glass(x, y, w, h)
        if self.blank:
            return out
        alpha = self.tissue_mask(x, y, w, h)
        if not alpha.any():
            return out
        normal, lesion, _ = _textures()
        tissue = _texture_at(normal, x, y, w, h, self.offset).astype(np.float32)
        inside = self.lesion_mask(x, y, w, h)
        if inside.any():
            lt = _texture_at(lesion, x, y, w, h, self.offset).astype(np.float32)
            tissue += (lt - tissue) * inside[..., None]
        a = alpha[..., None]
        return (tissue * a + out * (1 - a)).round().astype(np.uint8)

    def tissue_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Ground truth: float [h, w] in [0, 1], how much of each level-0 pixel is tissue (vs glass)."""
        if self.blank:
            return np.zeros((h, w), np.float32)
        return np.clip(self._field_at(x, y, w, h) * 4.0, 0.0, 1.0)  # soft tissue edge over ~1/4 field unit

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
                inside = np.maximum(inside, np.clip((1.0 - d) * 8.0, 0.0, 1.0))  # sharp-ish rim, 1/8 of r
        return inside

    def _glass(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Slightly warm, slightly noisy glass, like a real scan's background (and a fair test for Otsu).

        The noise is a fixed periodic texture, so a region renders the same whether drawn whole or in tiles.
        """
        noise = _texture_at(_textures()[2], x, y, w, h, self.offset)
        return (np.array(_GLASS, np.int16) + noise).astype(np.uint8)


# --------------------------------------------------------------------------- public entry points


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
    rng = np.random.default_rng(seed)
    positive = np.arange(n_slides) < (n_slides + 1) // 2
    rng.shuffle(positive)
    rows = []
    for i, pos in enumerate(positive):
        rel = Path("slides") / f"slide_{i:03d}.svs"
        synth = SyntheticSlide(width, height, seed=int(rng.integers(2**31)), positive=bool(pos))
        write_svs(out_dir / rel, width, height, synth.tile, mpp=mpp, magnification=round(10.0 / mpp, 2))
        rows.append({"slide": rel.as_posix(), "slide_id": rel.stem, "label": "positive" if pos else "negative"})
    labels = out_dir / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide", "slide_id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return labels


def make_demo_patches(
    out_dir: str | Path,
    n_per_class: int = 50,
    size: int = 64,
    seed: int = 0,
    *,
    n_slides: int = 4,
    width: int = 4096,
    height: int = 3072,
    slide_mpp: float = 0.25,
    mpp: float = 0.5,
    min_lesion: float = 0.25,
    min_tissue: float = 0.5,
    stain: tuple[float, float] = (0.3, 0.04),
    brightness: float = 0.15,
    hue: float = 0.06,
) -> Path:
    """A labelled ImageFolder `out_dir/{normal,lesion}/*.png` cut from held-out demo slides, plus ground_truth.csv.

    The slides are `SyntheticSlide`s like the demo cohort's, all positive, with slide seeds drawn from `seed`
    in a different order than `make_demo_cohort` draws them (for seeds 0-4 none coincides with the cohort's, so
    the demo evaluates on slides its encoder never saw). Patches are `size` px at `mpp` um/px (the demo tiles 64 px at
    0.5 mpp), area-averaged from `slide_mpp` like a tiler reading level 0. Labels come from the slides'
    ground truth: "lesion" if at least `min_lesion` of the patch is lesion texture (so border patches that are
    mostly normal tissue count), "normal" if none of it is; both need `min_tissue` tissue. Every patch gets its
    own stain and scanner variation, as if from a different lab: HED jitter (`stain` = (alpha, beta) of
    `HEDJitter`), brightness x U(1 -/+ `brightness`) and a hue shift of U(-/+ `hue`) turns, so that colour alone
    is a weaker cue than in a single-lab set. ground_truth.csv records where each patch came from.
    """
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from pathgen.data.augment import HEDJitter

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    scale = round(mpp / slide_mpp)
    if scale < 1 or not math.isclose(scale * slide_mpp, mpp):
        raise ValueError(f"mpp {mpp} must be a whole multiple of slide_mpp {slide_mpp}")
    side = size * scale  # level-0 px
    slides = [SyntheticSlide(width, height, seed=int(rng.integers(2**31)), positive=True) for _ in range(n_slides)]
    jitter = HEDJitter(*stain)

    def cover(s: SyntheticSlide, x: int, y: int) -> tuple[float, float]:
        tissue = s.tissue_mask(x, y, side, side)
        return float(tissue.mean()), float((s.lesion_mask(x, y, side, side) * tissue).mean())

    def draw(label: str) -> tuple[int, int, int, float, float]:
        """Rejection-sample one patch position of the class; lesion patches are drawn around a lesion disc."""
        for _ in range(10_000):
            k = int(rng.integers(n_slides))
            s = slides[k]
            if label == "lesion":
                cx, cy, r = s.lesions[int(rng.integers(len(s.lesions)))]
                x, y = (int(v - side / 2 + rng.uniform(-r - side / 2, r + side / 2)) for v in (cx, cy))
            else:
                x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if not (0 <= x <= width - side and 0 <= y <= height - side):
                continue
            tissue, lesion = cover(s, x, y)
            if tissue >= min_tissue and (lesion >= min_lesion if label == "lesion" else lesion == 0.0):
                return k, x, y, tissue, lesion
        raise RuntimeError(f"could not place a {label} patch; are the slides large enough for {side} px patches?")

    rows = []
    for label in ("normal", "lesion"):
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            k, x, y, tissue, lesion = draw(label)
            img = Image.fromarray(slides[k].tile(x, y, side, side)).reduce(scale)
            t = TF.to_dtype(TF.to_image(img), torch.float32, scale=True)
            a = torch.from_numpy(rng.uniform(1 - stain[0], 1 + stain[0], 3)).float()
            b = torch.from_numpy(rng.uniform(-stain[1], stain[1], 3)).float()
            t = jitter.jitter(t, a, b) * float(rng.uniform(1 - brightness, 1 + brightness))
            t = TF.adjust_hue(t.clamp(0, 1), float(rng.uniform(-hue, hue)))
            name = f"{label}_{i:04d}.png"
            Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out_dir / label / name)
            rows.append(
                {"path": f"{label}/{name}", "label": label, "slide_seed": slides[k].seed, "x": x, "y": y,
                 "size_level0": side, "tissue_fraction": round(tissue, 4), "lesion_fraction": round(lesion, 4)}
            )
    with (out_dir / "ground_truth.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out_dir


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
