"""How each stored patch is encoded: lossless (blosc-lz4), JPEG or WebP (imagecodecs), one blob per patch.

Figures behind the default (benchmarks/README.md, "Storage codec"): on 256 px patches of the benchmark slide,
JPEG at quality 90 takes ~21 KiB against ~188 KiB lossless, encodes about as fast as blosc-lz4 compresses and
decodes in ~0.45 ms (lz4: ~0.2 ms), far below the ~9-23 ms the SSL augmentation spends on a patch. WebP is
~15% smaller still but ~15-40x slower to encode and ~4x slower to decode. JPEG q90 is also what most labs
store. So `pathgen tile` writes JPEG q90 unless told otherwise; `PatchStoreWriter` itself stays lossless
unless asked, so a writer never loses data silently.

In Zarr a lossy `images` array keeps its shape [N, S, S, 3] and one patch per chunk, with the "pathgen.image"
codec (pathgen.store.zarr_codec) on its chunks: Zarr decodes it like any codec once that module is imported
(pathgen's store reader does) or, where pathgen is installed, through its `zarr.codecs` entry point. In HDF5
a lossy `images` dataset holds each patch's encoded bytes (variable-length uint8, attribute `codec`): h5py
reads them without any filter plugin, and any JPEG/WebP decoder (PIL, imagecodecs, cv2) turns them into pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathgen.errors import ConfigError

CODECS = ("lossless", "jpeg", "webp")
DEFAULT_CODEC = "jpeg"
DEFAULT_QUALITY = 90
# Lossless: blosc-lz4, no shuffle (uint8 RGB gains nothing from shuffling). On 256 px H&E/IHC patches lz4 encodes
# ~4x and decodes ~3x faster than zstd level 1 for ~15% more bytes: tiling and the SSL loader are CPU-bound.
BLOSC = {"cname": "lz4", "clevel": 5}


@dataclass(frozen=True)
class PatchCodec:
    """One patch <-> one blob. `quality` (1-100) applies to jpeg and webp only."""

    name: str = "lossless"
    quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ConfigError(None, f"--codec must be one of {', '.join(CODECS)}, got {self.name!r}")
        if not 1 <= int(self.quality) <= 100:
            raise ConfigError(None, f"--quality must be 1..100, got {self.quality}")

    @property
    def lossy(self) -> bool:
        return self.name != "lossless"

    @property
    def attrs(self) -> dict:
        """What the store records: codec, and quality for the lossy ones."""
        return {"codec": self.name, "quality": int(self.quality)} if self.lossy else {"codec": self.name}

    @classmethod
    def from_attrs(cls, attrs) -> PatchCodec:
        """The codec a store or dataset records (stores from before codecs existed are lossless)."""
        return cls(str(attrs.get("codec", "lossless")), int(attrs.get("quality", DEFAULT_QUALITY)))

    def encode(self, patch: np.ndarray) -> bytes:
        import imagecodecs

        patch = np.ascontiguousarray(patch, dtype=np.uint8)
        if self.name == "jpeg":
            return imagecodecs.jpeg8_encode(patch, level=int(self.quality))
        if self.name == "webp":
            return imagecodecs.webp_encode(patch, level=int(self.quality), lossless=False)
        return _blosc().encode(patch)

    def decode(self, data, shape: tuple[int, ...]) -> np.ndarray:
        """A fresh, writable uint8 array of `shape` (S, S, 3)."""
        import imagecodecs

        if self.name == "lossless":
            return _blosc().decode(data, out=np.empty(shape, dtype=np.uint8))
        data = bytes(data) if isinstance(data, np.ndarray) else data
        image = imagecodecs.jpeg8_decode(data) if self.name == "jpeg" else imagecodecs.webp_decode(data)
        if image.shape != tuple(shape):
            raise ValueError(f"decoded {self.name} patch has shape {image.shape}, expected {tuple(shape)}")
        return image

    def zarr_array_kwargs(self) -> dict:
        """serializer/compressors of the Zarr `images` array: one patch per chunk, as this codec encodes it."""
        from zarr.codecs import BloscCodec

        if self.lossy:
            from pathgen.store.zarr_codec import ImageCodec

            return {"serializer": ImageCodec(format=self.name, quality=int(self.quality)), "compressors": None}
        return {"compressors": BloscCodec(**BLOSC, shuffle="noshuffle")}


_BLOSC: list = []


def _blosc():
    if not _BLOSC:
        import numcodecs
        from numcodecs import Blosc

        numcodecs.blosc.use_threads = False  # as zarr does: parallelism comes from worker processes, not blosc
        _BLOSC.append(Blosc(**BLOSC, shuffle=Blosc.NOSHUFFLE))
    return _BLOSC[0]
