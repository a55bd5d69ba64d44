"""Patch stores: one Zarr v3 / HDF5 store per slide, the multi-store Dataset, the tiling manifest, and the
generated-views store (generated.zarr) of Gen-SIS."""

from pathgen.store.generated import GeneratedStore, GeneratedWriter, open_generated
from pathgen.store.manifest import ManifestRow, find_stores, read_manifest
from pathgen.store.reader import PatchStore, open_store
from pathgen.store.writer import PatchStoreWriter


def __getattr__(name):
    # PatchDataset pulls in torch and tile_cohort openslide: load them only when asked for.
    if name == "PatchDataset":
        from pathgen.store.dataset import PatchDataset

        return PatchDataset
    if name == "tile_cohort":
        from pathgen.slide.tiler import tile_cohort

        return tile_cohort
    raise AttributeError(f"module 'pathgen.store' has no attribute {name!r}")


__all__ = [
    "GeneratedStore",
    "GeneratedWriter",
    "open_generated",
    "ManifestRow",
    "PatchDataset",
    "PatchStore",
    "PatchStoreWriter",
    "find_stores",
    "open_store",
    "read_manifest",
    "tile_cohort",
]
