"""`pathgen.image`: the Zarr v3 codec of lossy patch stores (one JPEG or WebP image per chunk of one patch).

Registered with Zarr when this module is imported (pathgen's store reader and writer import it) and, for plain
`zarr.open` in an environment where pathgen is installed, through the `zarr.codecs` entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from zarr.abc.codec import ArrayBytesCodec  # public API, like register_codec: no zarr.core at run time
from zarr.registry import register_codec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

from pathgen.store.codecs import DEFAULT_QUALITY, PatchCodec

NAME = "pathgen.image"


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """A uint8 chunk [1, S, S, 3] <-> one JPEG or WebP image (configuration: format, quality)."""

    is_fixed_size = False
    format: str = "jpeg"
    quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        PatchCodec(self.format, self.quality)  # validates both

    @classmethod
    def from_dict(cls, data: dict) -> ImageCodec:
        config = data.get("configuration", {}) if data.get("name") == NAME else None
        if config is None:
            raise ValueError(f"not a {NAME} codec: {data!r}")
        return cls(**config)

    def to_dict(self) -> dict:
        return {"name": NAME, "configuration": {"format": self.format, "quality": self.quality}}

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> ImageCodec:
        return self

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if dtype.to_native_dtype() != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{NAME} stores uint8 RGB patches [N, S, S, 3], got {dtype} {shape}")

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        image = PatchCodec(self.format, self.quality).decode(chunk_bytes.to_bytes(), tuple(chunk_spec.shape[1:]))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(image.reshape(chunk_spec.shape))

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        patches = chunk_array.as_numpy_array()
        if patches.shape[0] != 1:
            raise ValueError(f"{NAME} encodes one patch per chunk, got {patches.shape[0]}")
        return chunk_spec.prototype.buffer.from_bytes(PatchCodec(self.format, self.quality).encode(patches[0]))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # an image's size depends on its content


register_codec(NAME, ImageCodec)
