"""Open a finished patch store (Zarr v3 directory or HDF5 file) and read patches from it."""

import os
from pathlib import Path

import numpy as np

from pathgen.errors import StoreError
from pathgen.store.codecs import PatchCodec
from pathgen.store.writer import shard_file

REQUIRED = ("coords", "tissue_fraction")
ABSENT = 2**64 - 1  # a shard index entry for a chunk that was never written


class ShardedImages:
    """Single-patch reads from the sharded Zarr `images` array the tiler writes, without Zarr's per-read machinery.

    The data loader reads random patches from many stores; Zarr spends ~1 ms per read around the ~0.5 ms blosc
    decode. Each shard's (offset, length) index is read once and cached, then a patch is one seek, one read and
    one decode. `for_array` returns None for any other layout, and PatchStore then reads through Zarr. The
    chunks' codec (blosc, or pathgen.image's JPEG/WebP) comes from the array's own metadata.
    """

    def __init__(
        self, path: Path, shard: int, patch_shape: tuple[int, ...], fill_value: int, codec: PatchCodec = PatchCodec()
    ):
        self.path, self.shard, self.patch_shape, self.fill_value = path, shard, patch_shape, fill_value
        self.codec = codec
        self._index: dict[int, np.ndarray] = {}
        self._files: dict[int, str] = {}  # shard file names as strings: pathlib joins cost ~0.06 ms per read

    @classmethod
    def for_array(cls, path: Path, images) -> "ShardedImages | None":
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

        try:  # zarr.core is zarr's private package: where it moves, Zarr's own (public) reading path takes over
            from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
        except ImportError:
            return None

        from pathgen.store.zarr_codec import ImageCodec

        md = images.metadata
        codecs = getattr(md, "codecs", ())
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or images.shards is None:
            return None
        sharding = codecs[0]
        inner = [type(c) for c in sharding.codecs]
        if inner == [ImageCodec]:
            codec = PatchCodec(sharding.codecs[0].format, sharding.codecs[0].quality)
        elif inner == [BytesCodec, BloscCodec]:
            codec = PatchCodec("lossless")
        else:
            return None
        plain = (
            sharding.index_location.value == "end"
            and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
            and isinstance(md.chunk_key_encoding, DefaultChunkKeyEncoding)
            and md.chunk_key_encoding.separator == "/"
            and images.chunks[0] == 1
            and tuple(images.shards[1:]) == tuple(images.chunks[1:])
        )
        return cls(path, images.shards[0], tuple(images.chunks[1:]), images.fill_value, codec) if plain else None

    def _shard_index(self, k: int, f) -> np.ndarray:
        if k not in self._index:
            import google_crc32c

            size = self.shard * 16 + 4
            f.seek(-size, os.SEEK_END)
            raw = f.read(size)
            if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise StoreError(self.path, f"shard {k} index fails its checksum (damaged file)")
            self._index[k] = np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)
        return self._index[k]

    def _file(self, k: int) -> str:
        if k not in self._files:
            self._files[k] = str(shard_file(self.path, k))
        return self._files[k]

    def __getitem__(self, i: int) -> np.ndarray:
        k, j = divmod(int(i), self.shard)
        try:
            with open(self._file(k), "rb") as f:
                offset, length = self._shard_index(k, f)[j]
                if offset == ABSENT:
                    return np.full(self.patch_shape, self.fill_value, dtype=np.uint8)
                f.seek(int(offset))
                data = f.read(int(length))
        except FileNotFoundError:  # a shard with no chunks written is not stored at all
            return np.full(self.patch_shape, self.fill_value, dtype=np.uint8)
        return self.codec.decode(data, self.patch_shape)  # a fresh writable array, no extra copy


def store_format(path: Path) -> str:
    """'zarr' or 'h5' from the name; StoreError for anything else."""
    if path.suffix == ".zarr":
        return "zarr"
    if path.suffix in (".h5", ".hdf5"):
        return "h5"
    raise StoreError(path, "not a patch store (expected a .zarr directory or an .h5 file)")


def _python(value):
    """HDF5 attributes come back as numpy scalars/arrays/bytes; give callers plain Python values like Zarr does."""
    if isinstance(value, np.ndarray):
        return [_python(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def open_store(path: str | Path) -> "PatchStore":
    """Open a finished store for reading; StoreError if it is missing, unfinished or malformed."""
    return PatchStore(path)


class PatchStore:
    """Read access to one slide's patches: `store[i]` -> uint8 [S, S, 3], `store.read(indices)` -> [k, S, S, 3]."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if ".tmp-" in self.path.name:
            raise StoreError(self.path, "unfinished store (temporary name from an interrupted or running tiling job)")
        self.format = store_format(self.path)
        if not self.path.exists():
            raise StoreError(self.path, "store not found")
        try:
            self._root = self._open()
        except StoreError:
            raise
        except Exception as err:  # zarr/h5py raise many types for a damaged store
            raise StoreError(self.path, f"cannot open store ({type(err).__name__}: {err})".splitlines()[0]) from None
        self.attrs = {k: _python(v) for k, v in self._root.attrs.items()}
        if self.attrs.get("complete") is not True:
            self.close()
            raise StoreError(self.path, "unfinished store (no 'complete' attribute); re-run `pathgen tile`")
        missing = [k for k in REQUIRED if k not in self._root]
        if missing:
            self.close()
            raise StoreError(self.path, f"malformed store, missing {', '.join(missing)}")
        self.coords = np.asarray(self._root["coords"][:], dtype=np.int64).reshape(-1, 2)
        # what CLAM/TRIDENT read on `coords` (their patch_size is the side read at patch_level); root's otherwise
        self.coords_attrs = {k: _python(v) for k, v in self._root["coords"].attrs.items()}
        self.tissue_fraction = np.asarray(self._root["tissue_fraction"][:], dtype=np.float32)
        self.labels = np.asarray(self._root["labels"][:], dtype=np.int64) if "labels" in self._root else None
        self._images = self._root["images"] if "images" in self._root else None
        self._fast = None
        self._encoded = None  # HDF5 with a lossy codec: each element is one patch's encoded bytes
        if self.format == "zarr" and self._images is not None:
            self._fast = ShardedImages.for_array(self.path / "images", self._images)
        elif self._images is not None and self._images.ndim == 1:
            self._encoded = PatchCodec.from_attrs(self._images.attrs)

    def _open(self):
        if self.format == "zarr":
            import zarr

            import pathgen.store.zarr_codec  # noqa: F401  (registers the codec of lossy stores with zarr)

            return zarr.open_group(self.path, mode="r", zarr_format=3)
        import h5py

        if not self.path.is_file():
            raise StoreError(self.path, "not an HDF5 file")
        return h5py.File(self.path, "r")

    @property
    def content_id(self) -> str:
        """sha256 of the store's coords, tissue fractions and attributes: what a tiling run decided.

        Later stages record it beside anything derived from the store (generated views, features), so that a store
        re-tiled with other settings, or from another slide, is noticed rather than silently mixed up.
        """
        import hashlib
        import json

        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.coords, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.tissue_fraction, dtype="<f4").tobytes())
        digest.update(json.dumps(self.attrs, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    @property
    def patch_size(self) -> int:
        return int(self.attrs["patch_size"])

    @property
    def has_images(self) -> bool:
        return self._images is not None

    def __len__(self) -> int:
        return len(self.coords)

    def _require_images(self) -> None:
        if self._images is None:
            raise StoreError(self.path, "store has no images (it was tiled with --coords-only)")

    def __getitem__(self, i: int) -> np.ndarray:
        self._require_images()
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"patch {i} out of range for {n} patches in {self.path}")
        i = int(i) % n
        if self._fast is not None:
            return self._fast[i]
        if self._encoded is not None:
            return self._encoded.decode(self._images[i], (self.patch_size, self.patch_size, 3))
        return np.asarray(self._images[i])

    def read(self, indices) -> np.ndarray:
        """Patches at `indices` (any order) as uint8 [k, S, S, 3]."""
        self._require_images()
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            s = self.patch_size
            return np.empty((0, s, s, 3), dtype=np.uint8)
        # Both backends want sorted unique indices for one fancy read; map back to the caller's order after.
        uniq, inverse = np.unique(indices, return_inverse=True)
        if self._encoded is not None:
            block = np.stack([self[int(i)] for i in uniq])
        elif self.format == "zarr":
            block = self._images.get_orthogonal_selection((uniq, slice(None), slice(None), slice(None)))
        else:
            block = self._images[uniq]
        return np.asarray(block)[inverse]

    def close(self) -> None:
        if self.format == "h5" and getattr(self, "_root", None) is not None:
            self._root.close()
        self._root = None

    def __enter__(self) -> "PatchStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PatchStore({str(self.path)!r}, format={self.format!r}, n={len(self)})"
