"""The patches of many slides as one Dataset: each read and decoded once, then resized for every input size.

A slide's pixels come from its patch store, or (`--from-slides`) straight from the slide file through the
tiler's own reader (`pathgen.slide.read_patch`) with the patch plan recorded in the store's attributes, so both
give the same pixels. Batches never straddle two slides (`slide_batches`), so the main loop writes one slide's
file at a time while DataLoader workers already decode the next.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pathgen.errors import SlideError, StoreError


@dataclass
class SlideSource:
    """Where one slide's patches come from and which preprocessings (transform keys) its encoders want."""

    name: str
    store: Path
    n: int
    keys: tuple
    slide_path: Path | None = None  # --from-slides: read the slide file itself with `plan`
    plan: object = None  # pathgen.slide.PatchPlan
    reader: str = "auto"  # the slide reader (the one the tiler used, unless told otherwise)
    mpp: float | None = None  # the level-0 mpp the tiler used: slides without one in their metadata still open


def plan_from_store(store) -> object:
    """The tiler's patch plan of a store (level, read size, patch size), as `read_patch` takes it."""
    from pathgen.slide import PatchPlan

    a = store.attrs
    missing = [k for k in ("patch_level", "read_size", "patch_size", "patch_size_level0", "target_mpp") if k not in a]
    if missing:
        raise StoreError(store.path, f"store lacks the patch plan ({', '.join(missing)}) needed to read its slide")
    return PatchPlan(store.coords, store.tissue_fraction, int(a["patch_level"]), int(a["read_size"]),
                     int(a["patch_size"]), int(a["patch_size_level0"]), float(a["target_mpp"]))


def find_slide(store, slide_root: Path) -> Path:
    """The store's slide file under `slide_root` (same file name, searched recursively); SlideError if absent."""
    recorded = Path(str(store.attrs.get("slide_path", "")))
    if not recorded.name:
        raise StoreError(store.path, "store does not record its slide (no slide_path attribute)")
    direct = slide_root / recorded.name
    found = [direct] if direct.is_file() else sorted(slide_root.rglob(recorded.name))
    if not found:
        raise SlideError(slide_root / recorded.name, f"slide of {store.path.name} not found under {slide_root}")
    size = store.attrs.get("slide_size")
    if size is not None and found[0].stat().st_size != int(size):
        raise SlideError(found[0], f"size differs from the slide {store.path.name} was tiled from ({size} bytes)")
    return found[0]


class SlidePatches(Dataset):
    """Item i -> ({key: transforms[key](patch)}, slide index, seconds spent reading+preprocessing, error).

    A patch that cannot be read yields zeros and a one-line error, so one bad slide fails alone.
    """

    def __init__(self, sources: list[SlideSource], transforms: dict[tuple, Callable]):
        self.sources, self.transforms = sources, transforms
        self.starts = np.concatenate([[0], np.cumsum([s.n for s in sources])]).astype(np.int64)
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _handle(self, k: int):
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own stores and slides
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            while len(self._handles) >= 4:  # slides are read in order: keep only the last few open
                self._handles.pop(next(iter(self._handles))).close()
            src = self.sources[k]
            if src.slide_path is not None:
                from pathgen.slide import open_slide

                self._handles[k] = open_slide(src.slide_path, reader=src.reader, mpp=src.mpp)
            else:
                from pathgen.store import open_store

                self._handles[k] = open_store(src.store)
        return self._handles[k]

    def read(self, k: int, j: int) -> np.ndarray:
        """uint8 [S, S, 3]: patch j of slide k."""
        src = self.sources[k]
        if src.slide_path is not None:
            from pathgen.slide import read_patch

            return read_patch(self._handle(k), src.plan, src.plan.coords[j])
        return self._handle(k)[j]

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        src = self.sources[k]
        t0 = time.perf_counter()
        try:
            patch = self.read(k, i - int(self.starts[k]))
            out = {key: self.transforms[key](patch) for key in src.keys}
            error = ""
        except Exception as err:  # noqa: BLE001 - this slide fails, the others carry on
            size = {key: self.transforms[key].size for key in src.keys}
            out = {key: torch.zeros(3, size[key], size[key], dtype=torch.uint8) for key in src.keys}
            error = " ".join(str(err).split()) or type(err).__name__
        return out, k, time.perf_counter() - t0, error

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # spawned workers get paths, never open handles
        return state

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def slide_batches(sources: list[SlideSource], batch_size: int) -> list[list[int]]:
    """Batches of consecutive item indices, each inside one slide, slides in order."""
    batches, start = [], 0
    for src in sources:
        batches += [list(range(a, min(a + batch_size, start + src.n))) for a in range(start, start + src.n, batch_size)]
        start += src.n
    return batches
