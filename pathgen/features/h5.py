"""Per-slide feature files in TRIDENT's layout, which CLAM/TRIDENT-based MIL code reads unchanged.

    <DIR>/features_<encoder>/<slide>.h5
        features          float32 [N, D] (float16 with --fp16)
        coords            int64   [N, 2] level-0 (x, y), with the tiling store's attributes (patch_size,
                                          patch_level, patch_size_level0, target_magnification, ...)
        tissue_fraction   float32 [N]
        root attributes   encoder, encoder_spec, encoder_sha256, embed_dim, patch_mpp, patch_size,
                          patch_size_level0, slide, source_store, store_id, settings (JSON), pathgen_version
    <DIR>/features_<encoder>/pt_files/<slide>.pt   (--export-pt) CLAM's bag: the features as one plain tensor

Read them with plain h5py, as TRIDENT does: `f["features"][:]`, `f["coords"][:]`, `dict(f["coords"].attrs)`.
Each file is written under `<name>.tmp-<pid>` and renamed into place when complete.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathgen.errors import FileError
from pathgen.store.writer import fsync_tree, remove_path, temp_path

PREFIX = "features_"
PT_FILES = "pt_files"


def encoder_dir(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / f"{PREFIX}{name}"


def feature_path(out_dir: str | Path, name: str, slide: str) -> Path:
    return encoder_dir(out_dir, name) / f"{slide}.h5"


def pt_path(h5_path: Path) -> Path:
    return h5_path.parent / PT_FILES / f"{h5_path.stem}.pt"


class FeatureFileWriter:
    """Fill one slide's feature file batch by batch; `close()` renames it (and its .pt) into place."""

    def __init__(self, path: Path, coords: np.ndarray, tissue_fraction: np.ndarray, coords_attrs: dict,
                 attrs: dict, embed_dim: int, fp16: bool = False, export_pt: bool = False):
        import h5py

        self.path, self.export_pt, self.n = Path(path), export_pt, len(coords)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(self.path)
        self._file = h5py.File(self.tmp, "w")
        self._file.attrs.update(attrs)
        self._file.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2)).attrs.update(coords_attrs)
        self._file.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float32))
        features = self._file.create_dataset("features", shape=(self.n, embed_dim),
                                             dtype=np.float16 if fp16 else np.float32)
        features.attrs.update(name=attrs.get("slide", self.path.stem), encoder=attrs.get("encoder", ""))
        self.written = 0

    def write(self, start: int, features: np.ndarray) -> None:
        self._file["features"][start : start + len(features)] = features
        self.written = max(self.written, start + len(features))

    def close(self) -> Path:
        if self.written != self.n:
            raise FileError(self.path, f"only {self.written} of {self.n} patches have features")
        pt_tmp = None
        if self.export_pt:  # CLAM loads a bag with torch.load: a plain tensor, safe with weights_only=True
            import torch

            target = pt_path(self.path)
            target.parent.mkdir(exist_ok=True)
            pt_tmp = temp_path(target)
            torch.save(torch.from_numpy(self._file["features"][:]), pt_tmp)
        self._file.close()
        fsync_tree(self.tmp)  # on disk before the rename makes it count as finished (as the tiler's stores)
        if pt_tmp is not None:
            fsync_tree(pt_tmp)
            os.replace(pt_tmp, pt_path(self.path))
        os.replace(self.tmp, self.path)  # last: the .h5 is what a rerun checks for
        return self.path

    def abort(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - already closed; deleted below anyway
            pass
        remove_path(self.tmp)
        remove_path(temp_path(pt_path(self.path)))


@dataclass
class FeatureFile:
    slide: str
    features: np.ndarray  # [N, D]
    coords: np.ndarray  # int64 [N, 2]
    tissue_fraction: np.ndarray  # [N]
    attrs: dict
    coords_attrs: dict


def _attrs(node) -> dict:
    from pathgen.store.reader import _python

    return {k: _python(v) for k, v in node.attrs.items()}


def read_feature_file(path: str | Path, features: bool = True) -> FeatureFile:
    """One slide's feature file (features=False skips the [N, D] array); FileError if it is not one."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("features", "coords") if k not in f]
            if missing:
                raise FileError(path, f"not a feature file (no {', '.join(missing)})")
            return FeatureFile(
                slide=path.stem,
                features=np.asarray(f["features"][:]) if features else np.empty((0, f["features"].shape[1])),
                coords=np.asarray(f["coords"][:], np.int64),
                tissue_fraction=np.asarray(f["tissue_fraction"][:]) if "tissue_fraction" in f else np.ones(0),
                attrs=_attrs(f),
                coords_attrs=_attrs(f["coords"]),
            )
    except OSError as err:
        raise FileError(path, f"cannot read feature file ({err})") from None


def feature_shape(path: str | Path) -> tuple[int, int]:
    import h5py

    with h5py.File(path, "r") as f:
        return tuple(f["features"].shape)


def is_up_to_date(path: Path, expected: dict, need_pt: bool) -> bool:
    """True when `path` is a finished feature file whose attributes include `expected` (store, encoder, settings)."""
    import h5py

    if not path.is_file() or (need_pt and not pt_path(path).is_file()):
        return False
    try:
        with h5py.File(path, "r") as f:
            attrs = _attrs(f)
    except OSError:
        return False
    return all(attrs.get(k) == v for k, v in expected.items())


def find_feature_files(features: str | Path) -> dict[str, Path]:
    """{slide: .h5} of a features_<encoder> folder, or of a run folder holding exactly one such folder."""
    root = Path(features)
    if not root.is_dir():
        raise FileError(root, "no such features folder")
    files = sorted(p for p in root.glob("*.h5") if p.is_file())
    if not files:
        subs = sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())
        if len(subs) > 1:
            names = ", ".join(p.name for p in subs)
            raise FileError(root, f"holds several encoders' features ({names}); give one of those folders")
        if subs:
            files = sorted(p for p in subs[0].glob("*.h5") if p.is_file())
    if not files:
        raise FileError(root, "no feature files (<slide>.h5) found; run `pathgen extract-features` first")
    return {p.stem: p for p in files}


def settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)
