"""Slide labels (labels.csv), their match with feature files, and bags read lazily from disk.

labels.csv: `slide_id,label[,case_id]`, or the tiling manifest of a slide list with label (and case_id) columns,
whose stores name the slides (its unlabelled slides are left out). Labels may be any strings; the classes are
sorted (numerically when they all are integers, so ISUP grades 0..5 keep their order) and recorded with every model
and result.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pathgen.errors import ConfigError


@dataclass
class Cohort:
    """The slides that have both a label and features, in labels.csv order."""

    slides: list[str]
    labels: np.ndarray  # int64 class index per slide
    cases: list[str]
    files: list[Path]
    classes: list[str]
    in_dim: int
    skipped: list[tuple[str, str]]  # (slide, why): no feature file, not in labels.csv, no patches


def sort_classes(names) -> list[str]:
    names = sorted(set(names))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names


def read_labels(path: str | Path) -> list[tuple[str, str, str]]:
    """[(slide_id, label, case_id)]; a slide without case_id is its own case. ConfigError naming the line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or [])
            # a tiling manifest of a labelled slide list: its stores name the slides as the feature files do
            manifest = "slide_id" not in columns and {"store", "status", "label"} <= columns
            if not ({"slide_id", "label"} <= columns or manifest):
                raise ConfigError(path, f"labels need columns slide_id,label (case_id optional), not {sorted(columns)}")
            rows, seen = [], {}
            for line, row in enumerate(reader, start=2):
                if manifest and row.get("status") == "failed":
                    continue  # a slide that could not be tiled has no features either
                slide = Path(row["store"]).name.split(".")[0] if manifest else (row.get("slide_id") or "").strip()
                label = (row.get("label") or "").strip()
                if manifest and not label:
                    continue  # an unlabelled slide of the cohort: pretraining data, not a MIL example
                if not slide or not label:
                    raise ConfigError(path, f"line {line}: empty slide_id or label")
                if slide in seen:
                    raise ConfigError(path, f"line {line}: slide {slide} is listed twice (first on line {seen[slide]})")
                seen[slide] = line
                rows.append((slide, label, (row.get("case_id") or "").strip() or slide))
    except OSError as err:
        raise ConfigError(path, f"cannot read labels ({err.strerror})") from None
    if not rows:
        raise ConfigError(path, "no slides under the slide_id,label header")
    return rows


def load_cohort(features: str | Path, labels: str | Path) -> Cohort:
    """Match labels.csv with the feature files of `features`; mismatches are reported, then skipped."""
    from pathgen.features.h5 import feature_shape, find_feature_files

    files = find_feature_files(features)
    rows = read_labels(labels)
    listed = {slide for slide, _, _ in rows}
    skipped = [(slide, "no feature file") for slide, _, _ in rows if slide not in files]
    skipped += [(slide, "not in the labels") for slide in sorted(set(files) - listed)]
    kept, dims = [], {}
    for row in rows:
        if row[0] not in files:
            continue
        n, d = feature_shape(files[row[0]])
        if n == 0:
            skipped.append((row[0], "no patches"))
            continue
        dims.setdefault(d, row[0])
        if len(dims) > 1:
            first = next(iter(dims))
            raise ConfigError(files[row[0]], f"features of width {d}, but {dims[first]} has {first}: mixed encoders?")
        kept.append(row)
    if not kept:
        raise ConfigError(labels, f"none of its {len(rows)} slides has a non-empty feature file in {features} "
                          f"(looked for e.g. {rows[0][0]}.h5; found {', '.join(sorted(files)[:3])})")
    classes = sort_classes(label for _, label, _ in kept)
    if len(classes) < 2:
        raise ConfigError(labels, f"need at least 2 classes among the slides with features, found {classes}")
    return Cohort(
        slides=[r[0] for r in kept],
        labels=np.array([classes.index(r[1]) for r in kept], np.int64),
        cases=[r[2] for r in kept],
        files=[files[r[0]] for r in kept],
        classes=classes,
        in_dim=next(iter(dims)),
        skipped=skipped,
    )


def read_bag(path: str | Path) -> torch.Tensor:
    """float32 [N, D] patch features of one slide (float16 files are widened)."""
    import h5py

    with h5py.File(path, "r") as f:
        return torch.from_numpy(np.asarray(f["features"][:], dtype=np.float32))


class BagDataset(Dataset):
    """(features [N, D], label) per slide, read from disk at every access: the cohort never has to fit in RAM."""

    def __init__(self, files: list[Path], labels: np.ndarray):
        self.files, self.labels = list(files), np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return read_bag(self.files[i]), int(self.labels[i])
