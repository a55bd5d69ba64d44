"""The real patches generation starts from: stores checked against the model, read by (store, patch) pairs.

Every store must be finished, hold images and have the model's patch size, unless resizing is asked for; all of
that is checked before anything is written, each problem a one-line StoreError naming the store.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathgen.errors import StoreError


class SourcePatches:
    """All patches of `stores`, numbered flat (store 0's patches first), read as uint8 [k, S, S, 3]."""

    def __init__(self, stores: Sequence[str | Path], image_size: int, resize: bool = False):
        from pathgen.store import open_store

        self.paths = [Path(p) for p in stores]
        if not self.paths:
            raise StoreError(None, "no patch stores given")
        self.image_size, self.resize = image_size, resize
        self._stores, self.content_ids, counts = [], [], []
        for path in self.paths:
            store = open_store(path)  # StoreError: missing, unfinished, malformed
            if not store.has_images:
                raise StoreError(path, "store has no images (it was tiled with --coords-only)")
            if store.patch_size != image_size and not resize:
                raise StoreError(path, f"patch size {store.patch_size} differs from the model's image size "
                                 f"{image_size} (pass --resize to resize the patches)")
            self._stores.append(store)
            self.content_ids.append(store.content_id)
            counts.append(len(store))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self._resizer = None
        if resize:
            from pathgen.data.augment import ResizeCenterCrop

            self._resizer = ResizeCenterCrop(image_size)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def pairs(self, flat: np.ndarray) -> np.ndarray:
        """Flat patch numbers -> (store index, patch index) rows [k, 2]."""
        flat = np.asarray(flat, dtype=np.int64)
        store = np.searchsorted(self.offsets, flat, side="right") - 1
        return np.stack([store, flat - self.offsets[store]], axis=1)

    def read(self, pairs: np.ndarray) -> np.ndarray:
        """uint8 [k, S, S, 3] patches at (store, patch) rows, in the given order, at the model's image size."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        s = self.image_size
        out = np.empty((len(pairs), s, s, 3), dtype=np.uint8)
        for k in np.unique(pairs[:, 0]):
            rows = np.flatnonzero(pairs[:, 0] == k)
            patches = self._stores[int(k)].read(pairs[rows, 1])
            if self._resizer is not None and patches.shape[1] != s:
                patches = np.stack([self._resizer(p).permute(1, 2, 0).numpy() for p in patches])
            out[rows] = patches
        return out

    def close(self) -> None:
        for store in self._stores:
            store.close()
