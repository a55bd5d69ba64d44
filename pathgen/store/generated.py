"""The generated-views store, `generated.zarr`: what `pathgen generate` writes and Gen-DINO reads.

One Zarr v3 group of N generated images and where each came from:

    images   uint8   [N, S, S, 3]   generated images (one image per chunk, one shard per write chunk)
    kind     uint8   [N]            0 = generated view, 1 = interpolation
    source   int64   [N, 2]         (index into attrs["stores"], patch index in that store) of image 1
    partner  int64   [N, 2]         the same for image 2; (-1, -1) for views
    alpha    float32 [N]            weight of image 1's embedding; 1.0 for views
    seed     int64   [N]            the item's noise seed
    done     uint8   [n_chunks]     1 once a write chunk's images are all in (resume bookkeeping)

Root attrs: stores (the source store paths as given), store_ids (each store's PatchStore.content_id),
encoder_sha256, model, sampler, steps, guidance_scale, image_size, pathgen_version, schema_version, complete,
plus whatever else the writer records.

The whole item table is fixed up front, so an item's place never depends on when it was made. Images are filled
one write chunk at a time: Zarr's local store writes each shard file atomically, and a chunk counts as done only
once its `done` flag is set after its images. A killed run therefore resumes by redoing the chunks not marked
done, with nothing lost and nothing written twice; `complete` is set when every chunk is in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathgen.errors import StoreError
from pathgen.store.writer import clean_attrs

SCHEMA_VERSION = 1
KIND_VIEW, KIND_INTERPOLATION = 0, 1
ITEM_ARRAYS = ("kind", "source", "partner", "alpha", "seed")
_DTYPES = {"kind": np.uint8, "source": np.int64, "partner": np.int64, "alpha": np.float32, "seed": np.int64}


class GeneratedStoreError(StoreError):
    """A generated-views store is missing, unfinished, malformed, or does not belong to the data it is used with."""


@dataclass
class ItemTable:
    """What each generated image is: kind [N], source [N, 2], partner [N, 2], alpha [N], seed [N]."""

    kind: np.ndarray
    source: np.ndarray
    partner: np.ndarray
    alpha: np.ndarray
    seed: np.ndarray

    def __post_init__(self) -> None:
        for name in ITEM_ARRAYS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=_DTYPES[name]))
        n = len(self.kind)
        shapes = {"source": (n, 2), "partner": (n, 2), "alpha": (n,), "seed": (n,), "kind": (n,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"item table: {name} has shape {getattr(self, name).shape}, expected {shape}")

    def __len__(self) -> int:
        return len(self.kind)

    def equals(self, other: ItemTable) -> bool:
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ITEM_ARRAYS)


class GeneratedWriter:
    """Create `path` for `items` (or reopen it to resume), then `write_chunk(k, images)` for each pending chunk.

        writer = GeneratedWriter(out / "generated.zarr", items, image_size=64, attrs={...}, chunk_items=256)
        for k in writer.pending():
            start, stop = writer.chunk_range(k)
            writer.write_chunk(k, make_images(start, stop))    # uint8 [stop - start, S, S, 3]
        writer.close()                                        # sets complete

    Reopening a store made for another item table, image size or `attrs` is a GeneratedStoreError: resuming it
    would mix two generations. A store that is already complete is left as it is (pending() is empty).
    """

    def __init__(self, path: str | Path, items: ItemTable, image_size: int, attrs: dict, chunk_items: int = 256):
        missing = [k for k in ("stores", "store_ids") if k not in attrs]
        if missing:
            raise ValueError(f"generated-store attrs need {', '.join(missing)}")
        self.path, self.items, self.image_size = Path(path), items, int(image_size)
        self.chunk_items = int(chunk_items)
        self.n_chunks = -(-len(items) // self.chunk_items)
        self.attrs = {**clean_attrs(attrs), "image_size": self.image_size, "chunk_items": self.chunk_items,
                      "n_items": len(items), "schema_version": SCHEMA_VERSION}
        if self.path.exists():
            self._root = self._reopen()
        else:
            self._root = self._create()
        self._done = self._root["done"]
        self._images = self._root["images"]

    def _create(self):
        import zarr
        from zarr.codecs import BloscCodec

        from pathgen.store.codecs import BLOSC

        s = self.image_size
        root = zarr.open_group(self.path, mode="w", zarr_format=3, attributes={**self.attrs, "complete": False})
        for name in ITEM_ARRAYS:
            root.create_array(name, data=getattr(self.items, name))
        root.create_array("done", shape=(self.n_chunks,), dtype="uint8", chunks=(1,), fill_value=0)
        # The patch stores' layout (one image per chunk, blosc-lz4, many per shard), so the same fast single-image
        # reader serves both; a shard is one write chunk, written in one atomic file write.
        root.create_array("images", shape=(len(self.items), s, s, 3), dtype="uint8", chunks=(1, s, s, 3),
                          shards=(self.chunk_items, s, s, 3), compressors=BloscCodec(**BLOSC, shuffle="noshuffle"),
                          fill_value=0)
        return root

    def _reopen(self):
        import zarr

        try:
            root = zarr.open_group(self.path, mode="r+", zarr_format=3)
            old = _read_items(root)
        except Exception as err:  # noqa: BLE001 - zarr raises many types for a foreign folder
            raise GeneratedStoreError(self.path, f"exists but is not a generated-views store ({type(err).__name__});"
                                      " remove it or choose another --out") from None
        recorded = {k: v for k, v in root.attrs.items() if k != "complete"}
        if not old.equals(self.items) or recorded != self.attrs:
            changed = sorted(k for k in set(recorded) | set(self.attrs) if recorded.get(k) != self.attrs.get(k))
            what = ", ".join(changed) if changed else "the item table"
            raise GeneratedStoreError(self.path, f"was made with other settings ({what} differ); remove it or "
                                      "choose another --out to generate anew")
        for debris in self.path.rglob("*.partial"):  # temp files of a write that was killed
            debris.unlink(missing_ok=True)
        return root

    def pending(self) -> list[int]:
        """Chunks whose images are not all in yet, in order."""
        if self._root.attrs.get("complete") is True:
            return []
        return np.flatnonzero(np.asarray(self._done[:]) == 0).tolist()

    def chunk_range(self, k: int) -> tuple[int, int]:
        return k * self.chunk_items, min((k + 1) * self.chunk_items, len(self.items))

    def write_chunk(self, k: int, images: np.ndarray) -> None:
        start, stop = self.chunk_range(k)
        s = self.image_size
        if images.dtype != np.uint8 or images.shape != (stop - start, s, s, 3):
            raise ValueError(f"chunk {k}: expected uint8 {(stop - start, s, s, 3)}, got {images.dtype} {images.shape}")
        self._images[start:stop] = images  # one shard: one atomic file write
        self._done[k] = 1  # only now does the chunk count as written

    def close(self) -> Path:
        """Mark the store complete; every chunk must be in."""
        missing = self.pending()
        if missing:
            raise GeneratedStoreError(self.path, f"{len(missing)} of {self.n_chunks} chunks are not written yet")
        self._root.attrs["complete"] = True
        return self.path


def _read_items(root) -> ItemTable:
    return ItemTable(**{name: np.asarray(root[name][:]) for name in ITEM_ARRAYS})


class GeneratedStore:
    """Read a complete generated-views store: the item table in memory, `store.image(i)` -> uint8 [S, S, 3]."""

    def __init__(self, path: str | Path):
        import zarr

        from pathgen.store.reader import ShardedImages

        self.path = Path(path)
        if not self.path.exists():
            raise GeneratedStoreError(self.path, "generated-views store not found (make it with `pathgen generate`)")
        try:
            root = zarr.open_group(self.path, mode="r", zarr_format=3)
            self.attrs = dict(root.attrs)
            self.items = _read_items(root)
            self._images = root["images"]
        except Exception as err:  # noqa: BLE001
            raise GeneratedStoreError(self.path, f"not a generated-views store ({type(err).__name__})") from None
        if self.attrs.get("complete") is not True:
            raise GeneratedStoreError(self.path, "unfinished generated-views store; rerun `pathgen generate` to "
                                      "finish it")
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise GeneratedStoreError(self.path, f"schema version {self.attrs.get('schema_version')} is not "
                                      f"{SCHEMA_VERSION}; regenerate it with this pathgen")
        self.stores: list[str] = list(self.attrs["stores"])
        self.store_ids: list[str] = list(self.attrs["store_ids"])
        self.image_size = int(self.attrs["image_size"])
        self._fast = ShardedImages.for_array(self.path / "images", self._images)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> np.ndarray:
        i = int(i)
        return self._fast[i] if self._fast is not None else np.asarray(self._images[i])

    def __getstate__(self) -> dict:
        # DataLoader workers get a copy: the zarr handle reopens lazily there (see __setstate__)
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        import zarr

        self.__dict__.update(state)
        self._images = zarr.open_group(self.path, mode="r", zarr_format=3)["images"]

    def match_stores(self, store_paths: list[str | Path], store_ids: list[str]) -> np.ndarray:
        """For each training store (path, content id), its index in this store's `stores`; -1 when it has none.

        A store is matched by content id, so moved or renamed stores still join. A training store whose path this
        store lists under another content id was re-tiled after generation: a GeneratedStoreError naming the
        store and both checksums. So is a generated set that shares no store at all with the training data.
        """
        by_id = {sid: k for k, sid in enumerate(self.store_ids)}
        by_path = {os.path.abspath(p): k for k, p in enumerate(self.stores)}
        index = np.full(len(store_paths), -1, dtype=np.int64)
        for i, (path, sid) in enumerate(zip(store_paths, store_ids, strict=True)):
            if sid in by_id:
                index[i] = by_id[sid]
                continue
            k = by_path.get(os.path.abspath(path))
            if k is not None:
                raise GeneratedStoreError(self.path, f"store {path} has changed since generation (content id "
                                          f"{sid[:12]} now, {self.store_ids[k][:12]} when generated): it was "
                                          "re-tiled; regenerate")
        if len(store_paths) and (index < 0).all():
            raise GeneratedStoreError(self.path, f"was made from other stores ({', '.join(self.stores[:3])}...), "
                                      f"none of them among the {len(store_paths)} training stores")
        return index

    def check_encoder(self, sha256: str, encoder: str | Path) -> None:
        """The generated views must come from the encoder whose embeddings conditioned them."""
        recorded = self.attrs.get("encoder_sha256")
        if recorded != sha256:
            raise GeneratedStoreError(self.path, f"was generated with encoder sha256 {str(recorded)[:12]}, but "
                                      f"{encoder} has sha256 {sha256[:12]}")


def open_generated(path: str | Path) -> GeneratedStore:
    """Open a complete generated-views store for reading; GeneratedStoreError (one line) if that is impossible."""
    return GeneratedStore(path)
