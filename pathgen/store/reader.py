"""Open a finished patch store (Zarr v3 directory or HDF5 file) and read patches from it."""

from pathlib import Path

import numpy as np

from pathgen.errors import StoreError

REQUIRED = ("coords", "tissue_fraction")


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
        self.tissue_fraction = np.asarray(self._root["tissue_fraction"][:], dtype=np.float32)
        self.labels = np.asarray(self._root["labels"][:], dtype=np.int64) if "labels" in self._root else None
        self._images = self._root["images"] if "images" in self._root else None

    def _open(self):
        if self.format == "zarr":
            import zarr

            return zarr.open_group(self.path, mode="r", zarr_format=3)
        import h5py

        if not self.path.is_file():
            raise StoreError(self.path, "not an HDF5 file")
        return h5py.File(self.path, "r")

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
        return np.asarray(self._images[int(i) % n])

    def read(self, indices) -> np.ndarray:
        """Patches at `indices` (any order) as uint8 [k, S, S, 3]."""
        self._require_images()
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            s = self.patch_size
            return np.empty((0, s, s, 3), dtype=np.uint8)
        # Both backends want sorted unique indices for one fancy read; map back to the caller's order after.
        uniq, inverse = np.unique(indices, return_inverse=True)
        if self.format == "zarr":
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
