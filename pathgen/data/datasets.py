"""One entry point from "what the user pointed at" to a labelled torch Dataset of (image, label) items.

Sources, decided per path:
    a folder whose sub-folders hold images   -> torchvision ImageFolder (class = sub-folder name)
    a store, folder of stores, glob, tiling manifest.csv -> PatchDataset over find_stores(...)
    a CSV with columns path,label[,case_id]   -> PatchDataset, every patch of a store gets its slide's label
A list of sources of different kinds is concatenated; their class names must agree.

Every item also belongs to a group (`dataset_groups`): its slide for patch stores, its case when a labelled CSV
has a case_id column, itself for an ImageFolder image. Held-out splits never put one group on both sides.
"""

import csv
import glob
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from pathgen.errors import ConfigError, PathgenError

Source = str | Path


def _is_image(path: Path) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return path.suffix.lower() in IMG_EXTENSIONS


def _is_image_folder(folder: Path) -> bool:
    """True if some direct sub-folder (a class) holds an image file (searched recursively, as ImageFolder does)."""
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.name.endswith(".zarr") and any(_is_image(p) for p in sub.rglob("*")):
            return True
    return False


def _holds_stores(folder: Path) -> bool:
    """A `pathgen tile` output folder: stores or a manifest at the top (its qc/ PNGs are not a class)."""
    return any(
        p.suffix in (".zarr", ".h5") or (p.name.startswith("manifest") and p.suffix == ".csv") for p in folder.iterdir()
    )


def _csv_columns(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, f"cannot read CSV ({err})") from None


def _kind(source: Source) -> str:
    """'imagefolder', 'labelled_csv' or 'stores' (stores, folders of stores, globs, manifests)."""
    path = Path(source)
    if not path.exists():
        if glob.has_magic(str(source)):
            return "stores"
        raise ConfigError(source, "no such file or folder")
    if path.suffix == ".csv" and path.is_file():
        return "labelled_csv" if {"path", "label"} <= set(_csv_columns(path)) else "stores"
    if path.is_dir() and path.suffix != ".zarr" and not _holds_stores(path) and _is_image_folder(path):
        return "imagefolder"
    return "stores"


def _image_folder(path: Path, transform: Callable | None) -> Dataset:
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(path), transform=transform)


def _stores(sources: Sequence[Source], transform: Callable | None) -> Dataset:
    from pathgen.store import PatchDataset, find_stores

    stores = find_stores(list(sources))
    if not stores:
        raise ConfigError(", ".join(map(str, sources)), "no images in class sub-folders and no patch stores found")
    return PatchDataset(stores, transform=transform)


def _labelled_csv(path: Path, transform: Callable | None) -> Dataset:
    """CSV rows `path,label[,case_id]`: a store (relative to the CSV's folder), its slide-level class, its case."""
    from pathgen.store import PatchDataset, find_stores

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(path, "no rows under the path,label header")
    stores, names, cases = [], [], []
    for line, row in enumerate(rows, start=2):
        store, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not store or not label:
            raise ConfigError(path, f"line {line}: empty path or label")
        store_path = Path(store) if Path(store).is_absolute() else path.parent / store
        found = find_stores([store_path])
        if len(found) != 1:
            raise ConfigError(path, f"line {line}: {store} is not a single patch store")
        stores.append(found[0])
        names.append(label)
        cases.append((row.get("case_id") or "").strip() or str(found[0]))  # no case given: the slide is its own
    classes = sorted(set(names))
    dataset = PatchDataset(stores, transform=transform, labels=[classes.index(n) for n in names])
    dataset.classes = classes
    dataset.store_groups = cases
    return dataset


def build_dataset(sources: Source | Sequence[Source], transform: Callable | None = None) -> Dataset:
    """A Dataset of (transform(PIL image) or PIL image, int label) with `.classes` (None if unlabelled)."""
    sources = [sources] if isinstance(sources, str | Path) else list(sources)
    if not sources:
        raise ConfigError(None, "no data sources given")
    kinds = [_kind(s) for s in sources]
    if all(k == "stores" for k in kinds):  # one PatchDataset over all stores: one index, one set of handles
        return _stores(sources, transform)
    parts = []
    for source, kind in zip(sources, kinds, strict=True):
        if kind == "imagefolder":
            parts.append(_image_folder(Path(source), transform))
        elif kind == "labelled_csv":
            parts.append(_labelled_csv(Path(source), transform))
        else:
            parts.append(_stores([source], transform))
    if len(parts) == 1:
        return parts[0]
    classes = [getattr(p, "classes", None) for p in parts]
    if any(c != classes[0] for c in classes):
        raise ConfigError(", ".join(map(str, sources)), f"sources have different classes: {classes}")
    dataset = ConcatDataset(parts)
    dataset.classes = classes[0]
    return dataset


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """Every item's label without loading any image (ImageFolder, PatchDataset, Subset, ConcatDataset)."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_targets(d) for d in dataset.datasets])
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)
    return np.asarray(targets, dtype=np.int64)


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """Class names, looking through Subset wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "classes", None)


def align_labels(labels: torch.Tensor, classes: list[str] | None, reference: list[str] | None) -> torch.Tensor:
    """Re-index labels given by `classes` names into the order of `reference` (another split's classes).

    Two ImageFolders with different class sub-folders (a test set missing a class) number them differently;
    comparing by index would then silently mis-score. Classes absent from `reference` get new indices after
    its last one (they can never be predicted, so they count as errors); negative (unlabelled) stay as they are.
    """
    if classes is None or reference is None or classes == reference:
        return labels
    extra = [c for c in classes if c not in reference]
    order = list(reference) + extra
    lookup = torch.tensor([order.index(c) for c in classes], dtype=torch.long)
    return torch.where(labels >= 0, lookup[labels.clamp_min(0)], labels)


def dataset_groups(dataset: Dataset) -> np.ndarray:
    """Every item's group as a string, without loading any image: what a held-out split must keep together.

    Patch stores: the store (one slide), or the case given by a labelled CSV's case_id column. Anything else
    (an ImageFolder image) is its own group, since nothing says which slide it came from.
    """
    if isinstance(dataset, Subset):
        return dataset_groups(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([_part_groups(d, k) for k, d in enumerate(dataset.datasets)])
    return _part_groups(dataset, None)


def _part_groups(dataset: Dataset, part: int | None) -> np.ndarray:
    from pathgen.store.dataset import PatchDataset

    if isinstance(dataset, Subset | ConcatDataset):
        return dataset_groups(dataset)
    if isinstance(dataset, PatchDataset):
        return np.asarray(dataset.store_groups, dtype=object)[dataset.store_ids]
    prefix = "item" if part is None else f"item:{part}"  # unique per part: images of two folders never merge
    return np.array([f"{prefix}:{i}" for i in range(len(dataset))], dtype=object)


def split_stratified(dataset: Dataset, test_fraction: float = 0.3, seed: int = 0) -> tuple[Subset, Subset]:
    """A seeded train/test split by group (slide or case; see `dataset_groups`), stratified by class.

    `test_fraction` is the share of groups held out. A group's class for stratifying is its most common label;
    groups of a class with a single group go to train. Patches of one slide are near-duplicates, so splitting
    them one by one would put the same slide on both sides and inflate the score.
    """
    from sklearn.model_selection import train_test_split

    y = dataset_targets(dataset)
    if len(y) == 0:
        raise PathgenError("cannot split an empty dataset into train and test")
    uniq, first, inverse = np.unique(dataset_groups(dataset).astype(str), return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))  # number groups in order of appearance
    group_of = rank[inverse.reshape(-1)]
    votes = np.zeros((len(uniq), int(y.max() - y.min()) + 1), np.int64)
    np.add.at(votes, (group_of, y - y.min()), 1)
    group_y = votes.argmax(axis=1) + y.min()
    index = np.arange(len(uniq))
    counts = {c: n for c, n in zip(*np.unique(group_y, return_counts=True), strict=True)}
    single = np.array([counts[c] < 2 for c in group_y], dtype=bool)
    if (~single).sum() < 2:
        raise PathgenError(
            f"cannot split {len(uniq)} group(s) (slides, cases or images) into train and test: no class has 2"
        )
    n_test = max(1, round(test_fraction * (~single).sum()))
    n_classes = len([c for c, n in counts.items() if n >= 2])
    stratify = group_y[~single] if n_classes <= n_test <= (~single).sum() - n_classes else None
    train, test = train_test_split(index[~single], test_size=n_test, random_state=seed, stratify=stratify)
    in_test = np.isin(group_of, test)
    return Subset(dataset, np.flatnonzero(~in_test).tolist()), Subset(dataset, np.flatnonzero(in_test).tolist())
