"""A torch Dataset over the patches of many stores, with random access for SSL training."""

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathgen.errors import StoreError
from pathgen.store.reader import PatchStore, open_store


class PatchDataset(torch.utils.data.Dataset):
    """Every patch of every store (optionally those with tissue_fraction >= min_tissue) as (image, label).

    labels: one int per store (a slide-level label for all its patches); otherwise each store's own `labels`,
    otherwise -1. Stores are opened lazily and once per process, so DataLoader workers get their own handles.
    The transform receives a PIL image, as torchvision's datasets give, unless it has `accepts_arrays = True`:
    then it gets the stored uint8 HxWx3 array itself (pathgen's transforms do; it saves two copies per patch).
    """

    def __init__(
        self,
        stores: Sequence[str | Path],
        transform: Callable | None = None,
        min_tissue: float = 0.0,
        labels: Sequence[int] | None = None,
    ):
        self.paths = [Path(p) for p in stores]
        if labels is not None and len(labels) != len(self.paths):
            raise StoreError(None, f"got {len(labels)} labels for {len(self.paths)} stores")
        self.transform = transform
        self.classes: list[str] | None = None
        # What a held-out split keeps together: each store's slide, or its case (set by a labelled CSV).
        self.store_groups: list[str] = [str(p) for p in self.paths]
        store_ids, patch_ids, patch_labels = [], [], []
        for k, path in enumerate(self.paths):
            with open_store(path) as store:
                if not store.has_images:
                    raise StoreError(path, "store has no images (it was tiled with --coords-only)")
                keep = np.flatnonzero(store.tissue_fraction >= min_tissue)
                if labels is not None:
                    y = np.full(len(keep), int(labels[k]), dtype=np.int64)
                elif store.labels is not None:
                    y = store.labels[keep]
                    self._merge_classes(path, store.attrs.get("classes"))
                else:
                    y = np.full(len(keep), -1, dtype=np.int64)
            store_ids.append(np.full(len(keep), k, dtype=np.int32))
            patch_ids.append(keep)
            patch_labels.append(y)
        self.store_ids = np.concatenate(store_ids) if store_ids else np.empty(0, np.int32)
        self.patch_ids = np.concatenate(patch_ids) if patch_ids else np.empty(0, np.int64)
        self.targets = np.concatenate(patch_labels) if patch_labels else np.empty(0, np.int64)
        self._handles: dict[int, PatchStore] = {}
        self._pid = os.getpid()

    def _merge_classes(self, path: Path, classes) -> None:
        if classes is None:
            return
        classes = list(classes)
        if self.classes is not None and self.classes != classes:
            raise StoreError(path, f"store classes {classes} differ from other stores' {self.classes}")
        self.classes = classes

    def _store(self, k: int) -> PatchStore:
        if os.getpid() != self._pid:  # forked DataLoader worker: never share the parent's file handles
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = open_store(self.paths[k])
        return self._handles[k]

    def __len__(self) -> int:
        return len(self.patch_ids)

    def array(self, i: int) -> np.ndarray:
        """Item i's stored uint8 HxWx3 patch, untransformed."""
        return self.read_patch(int(self.store_ids[i]), int(self.patch_ids[i]))

    def read_patch(self, store: int, patch: int) -> np.ndarray:
        """Patch `patch` of store `store` (an index into `paths`), whether or not min_tissue kept it as an item."""
        return self._store(store)[patch]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        patch = self.array(i)
        if getattr(self.transform, "accepts_arrays", False):
            return self.transform(patch), int(self.targets[i])
        img = Image.fromarray(patch)
        return (self.transform(img) if self.transform is not None else img), int(self.targets[i])

    def __getstate__(self) -> dict:
        # Spawned DataLoader workers receive a pickled copy: send paths and indices, not open handles.
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def close(self) -> None:
        for store in self._handles.values():
            store.close()
        self._handles = {}
