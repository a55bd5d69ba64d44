"""Procedural H&E tissue for the demo: three morphologies that share ONE colour distribution.

The demo's labelled task (lesion vs normal) must be solvable only by looking at structure, so that an encoder
that learnt morphology beats one that did not. Every texture here is a field of nuclei covering the same share of
the tissue, and its stain maps are forced to the same distribution:

    epithelium  small round nuclei on a regular (jittered hexagonal) lattice
    stroma      spindle-shaped nuclei aligned in smooth streams
    lesion      large, pleomorphic, vesicular nuclei (pale centre, a nucleolus), disordered

The haematoxylin (H) map of stroma and lesion is rank-matched to that of epithelium, and the eosin (E) map is
the same function of H and of noise shared by all three, so the joint (H, E) law of the pixels - hence their
colour after any stain - is the same for every morphology. A shared cellularity field (nuclei larger here,
smaller there) gives every morphology the same spread of per-patch nuclear content.

Maps are made at the demo's analysis resolution (one texel = `TEXEL` level-0 px: 0.5 um/px on the demo's
0.25 um/px slides), where the colour matching must hold, and repeat every `PERIOD` texels. `Stain` turns them
into RGB through the Beer-Lambert law with one lab's stain amounts and one scanner's white balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TEXEL = 2  # level-0 px per texel
PERIOD = 700  # texels; not a multiple of the demo tiler's 64-texel grid, so repeats do not give identical patches
MORPHOLOGIES = ("epithelium", "stroma", "lesion")
NUCLEAR_FRACTION = 0.3  # share of tissue area under nuclei, the same in every morphology


@dataclass(frozen=True)
class Nuclei:
    """How one morphology's nuclei are laid out, in texels."""

    spacing: float  # lattice pitch; the nucleus size follows from it and NUCLEAR_FRACTION
    jitter: float  # lattice position noise, as a fraction of the spacing
    pleomorphism: float  # sigma of the log-normal nucleus size
    aspect: tuple[float, float]  # long / short axis, drawn uniformly
    aligned: bool = False  # orientation follows the smooth stream field (else uniform)
    vesicular: bool = False  # pale centre and a dark nucleolus


NUCLEI = {
    "epithelium": Nuclei(spacing=9.0, jitter=0.12, pleomorphism=0.08, aspect=(1.0, 1.2)),
    "stroma": Nuclei(spacing=9.0, jitter=0.2, pleomorphism=0.1, aspect=(3.0, 4.5), aligned=True),
    "lesion": Nuclei(spacing=18.0, jitter=0.22, pleomorphism=0.3, aspect=(1.0, 1.7), vesicular=True),
}

# Ruifrok & Johnston's optical-density vectors of haematoxylin and eosin (skimage.color.rgb_from_hed, rows 0-1).
_H_OD = np.array([0.65, 0.70, 0.29], np.float32) / np.linalg.norm([0.65, 0.70, 0.29])
_E_OD = np.array([0.07, 0.99, 0.11], np.float32) / np.linalg.norm([0.07, 0.99, 0.11])
_H_DENSITY, _E_DENSITY = 1.1, 0.6  # optical density of a full nucleus / of plain eosin at unit stain amount


def _noise(rng: np.random.Generator, period: int, sigma: float) -> np.ndarray:
    """Periodic smooth Gaussian noise with unit variance."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal((period, period)).astype(np.float32), sigma, mode="wrap")
    return field / field.std()


def _lattice(rng: np.random.Generator, period: int, spacing: float, jitter: float) -> np.ndarray:
    """[n, 2] (x, y) points of a jittered hexagonal lattice that tiles the periodic square."""
    nx = max(1, round(period / spacing))
    ny = max(2, 2 * round(period / (spacing * np.sqrt(3))))  # even, so staggered rows wrap around
    j, i = np.mgrid[0:ny, 0:nx]
    pts = np.stack([((i + 0.5 * (j % 2)) * period / nx).ravel(), (j * period / ny).ravel()], axis=1)
    return (pts + rng.normal(0.0, jitter * spacing, pts.shape)) % period


def _ellipses(period: int, pts: np.ndarray, rx: np.ndarray, ry: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Max of soft-edged filled ellipses (semi-axes rx, ry at `angle`) on a periodic canvas, all at once."""
    radius = int(np.ceil(max(rx.max(), ry.max()))) + 2
    offsets = np.arange(-radius, radius + 1)
    base = np.floor(pts).astype(np.int64)
    fx, fy = (pts - base).astype(np.float32).T
    dx = offsets[None, None, :] - fx[:, None, None]
    dy = offsets[None, :, None] - fy[:, None, None]
    cos, sin = (f(angle).astype(np.float32)[:, None, None] for f in (np.cos, np.sin))
    u = (cos * dx + sin * dy) / rx.astype(np.float32)[:, None, None]
    v = (cos * dy - sin * dx) / ry.astype(np.float32)[:, None, None]
    # ~0.8 texel of soft edge: anti-aliased at the analysis resolution
    inside = np.clip((1 - np.sqrt(u * u + v * v)) * np.minimum(rx, ry)[:, None, None] / 0.8, 0, 1)
    rows = (base[:, 1, None] + offsets) % period
    cols = (base[:, 0, None] + offsets) % period
    flat = (rows[:, :, None] * period + cols[:, None, :]).ravel()
    values = inside.ravel().astype(np.float32)
    keep = values > 0
    canvas = np.zeros(period * period, np.float32)
    np.maximum.at(canvas, flat[keep], values[keep])
    return canvas.reshape(period, period)


def _nuclei_map(rng: np.random.Generator, period: int, spec: Nuclei, cellularity: np.ndarray,
                streams: np.ndarray) -> np.ndarray:
    """Nuclear (haematoxylin) density in [0, ~1.6] of one morphology."""
    pts = _lattice(rng, period, spec.spacing, spec.jitter)
    at = (pts[:, 1].astype(int) % period, pts[:, 0].astype(int) % period)
    size = rng.lognormal(0.0, spec.pleomorphism, len(pts)) * np.clip(1 + 0.4 * cellularity[at], 0.3, None)
    size /= np.sqrt(np.mean(size**2))  # keeps the nuclear area fraction at NUCLEAR_FRACTION
    r0 = spec.spacing * np.sqrt(NUCLEAR_FRACTION * np.sqrt(3) / 2 / np.pi)  # hexagonal cell area = sqrt(3)/2 s^2
    aspect = rng.uniform(*spec.aspect, len(pts))
    rx, ry = r0 * size * np.sqrt(aspect), r0 * size / np.sqrt(aspect)
    angle = streams[at] + rng.normal(0.0, 0.15, len(pts)) if spec.aligned else rng.uniform(0, np.pi, len(pts))
    nuclei = _ellipses(period, pts, rx, ry, angle)
    if spec.vesicular:  # chromatin at the rim, a pale centre, one nucleolus near the middle
        centre = _ellipses(period, pts, 0.6 * rx, 0.6 * ry, angle)
        nucleolus_at = pts + rng.normal(0.0, 0.1 * r0, pts.shape)
        one = np.full(len(pts), max(1.0, 0.22 * r0))
        nuclei = nuclei * (1 - 0.45 * centre) + 0.6 * _ellipses(period, nucleolus_at, one, one, angle)
    return nuclei


def _rank_match(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`values` with their order kept but their distribution replaced by `reference`'s (exact, by rank)."""
    out = np.empty(values.size, np.float32)
    out[np.argsort(values, axis=None, kind="stable")] = np.sort(reference, axis=None)
    return out.reshape(values.shape)


@lru_cache(maxsize=16)
def stain_maps(seed: int, period: int = PERIOD) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{morphology: (H, E)} float32 [period, period] stain amounts of one slide's tissue, from its seed.

    Read-only (cached): slides built from the same seed share them.
    """
    rng = np.random.default_rng(seed)
    chromatin, fibres, uneven = _noise(rng, period, 0.6), _noise(rng, period, 1.0), _noise(rng, period, 10.0)
    cellularity = _noise(rng, period, 12.0)
    a, b = _noise(rng, period, 25.0), _noise(rng, period, 25.0)
    streams = 0.5 * np.arctan2(a, b)  # a smooth orientation field, uniform over [0, pi)
    h = {name: _nuclei_map(rng, period, NUCLEI[name], cellularity, streams) * (0.9 + 0.15 * chromatin)
         for name in MORPHOLOGIES}
    reference = h["epithelium"]
    maps = {}
    for name in MORPHOLOGIES:
        hn = reference if name == "epithelium" else _rank_match(h[name], reference)
        # eosin from H and shared noise only: the joint (H, E) law is the reference's in every morphology
        e = 0.5 * (1 + 0.2 * fibres + 0.1 * uneven) * (1 - 0.7 * np.clip(hn, 0, 1))
        scale = 1 + 0.15 * uneven  # uneven staining, the same under every morphology
        maps[name] = tuple(np.ascontiguousarray(np.clip(m * scale, 0, None), dtype=np.float32) for m in (hn + 0.05, e))
        for m in maps[name]:
            m.flags.writeable = False
    return maps


@dataclass(frozen=True)
class Stain:
    """One lab's staining and one scanner: stain amounts and the white balance of the light."""

    h: float = 1.0
    e: float = 1.0
    white: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def draw(cls, rng: np.random.Generator, amount: float = 0.25, white: float = 0.06) -> Stain:
        """Stain amounts x U(1 -/+ amount) each; white balance x U(1 - white, 1) per channel."""
        h, e = rng.uniform(1 - amount, 1 + amount, 2)
        return cls(float(h), float(e), tuple(float(v) for v in rng.uniform(1 - white, 1.0, 3)))

    def render(self, h: np.ndarray, e: np.ndarray) -> np.ndarray:
        """uint8 RGB [..., 3] of stain amount maps: Beer-Lambert, I = white * exp(-OD)."""
        od = h[..., None] * (_H_DENSITY * self.h * _H_OD) + e[..., None] * (_E_DENSITY * self.e * _E_OD)
        return np.clip(255 * np.asarray(self.white, np.float32) * np.exp(-od), 0, 255).round().astype(np.uint8)
