"""Cross-validation splits: stratified by label and grouped by case, so one patient never spans train and test.

splits.csv has one row per slide and fold: `slide_id,case_id,fold,split` with split train | val | test. It is
written to OUT/splits.csv and read back by `--splits` (val rows are optional there: without them a validation
set is carved from the fold's training slides).
"""

import csv
from pathlib import Path

import numpy as np

from pathgen.errors import ConfigError

SPLITS = ("train", "val", "test")


def _grouped_holdout(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified, case-grouped held-out share of about `fraction` of the items."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    if len(np.unique(groups)) < n_splits:
        n_splits = len(np.unique(groups))
    if n_splits < 2:
        return np.zeros(len(y), bool)
    _, held = next(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(y, y, groups))
    mask = np.zeros(len(y), bool)
    mask[held] = True
    return mask


def carve_validation(y: np.ndarray, cases: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask of the validation items within a training fold (none when fraction is 0)."""
    if fraction <= 0:
        return np.zeros(len(y), bool)
    return _grouped_holdout(y, cases, fraction, seed)


def make_splits(slides: list[str], y: np.ndarray, cases: list[str], folds: int, val_fraction: float,
                test_fraction: float, seed: int) -> list[dict]:
    """Rows of splits.csv: `folds` stratified case-grouped folds (folds=1: one held-out test_fraction)."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(cases)
    n_cases = len(np.unique(groups))
    if folds > 1:
        if n_cases < folds:
            raise ConfigError(None, f"{folds}-fold cross-validation needs at least {folds} cases, got {n_cases}")
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        tests = [test for _, test in cv.split(y, y, groups)]
    else:
        if n_cases < 2:
            raise ConfigError(None, f"a held-out split needs at least 2 cases, got {n_cases}")
        tests = [np.flatnonzero(_grouped_holdout(y, groups, test_fraction, seed))]
    rows = []
    for fold, test in enumerate(tests):
        is_test = np.zeros(len(y), bool)
        is_test[test] = True
        train = np.flatnonzero(~is_test)
        is_val = np.zeros(len(y), bool)
        is_val[train[carve_validation(y[train], groups[train], val_fraction, seed + fold)]] = True
        for i, slide in enumerate(slides):
            split = "test" if is_test[i] else "val" if is_val[i] else "train"
            rows.append({"slide_id": slide, "case_id": cases[i], "fold": fold, "split": split})
    return rows


def write_splits(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "fold", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_splits(path: str | Path, slides: list[str], cases: list[str]) -> list[dict]:
    """Rows of a splits.csv for the cohort's slides; every slide of every fold must be assigned."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"slide_id", "fold", "split"} <= set(reader.fieldnames or []):
                raise ConfigError(path, "splits need columns slide_id,fold,split (split: train, val or test)")
            raw = list(enumerate(reader, start=2))
    except OSError as err:
        raise ConfigError(path, f"cannot read splits ({err.strerror})") from None
    case_of = dict(zip(slides, cases, strict=True))
    rows, seen = [], set()
    for line, r in raw:
        slide, split = r["slide_id"].strip(), r["split"].strip()
        if split not in SPLITS:
            raise ConfigError(path, f"line {line}: split must be train, val or test, got {split!r}")
        try:
            fold = int(r["fold"])
        except ValueError:
            raise ConfigError(path, f"line {line}: fold {r['fold']!r} is not an integer") from None
        if (slide, fold) in seen:
            raise ConfigError(path, f"line {line}: slide {slide} appears twice in fold {fold}")
        seen.add((slide, fold))
        if slide in case_of:
            rows.append({"slide_id": slide, "case_id": case_of[slide], "fold": fold, "split": split})
    folds = sorted({r["fold"] for r in rows})
    if not folds:
        raise ConfigError(path, "none of its slides is in the cohort (slides with labels and features)")
    for fold in folds:
        assigned = {r["slide_id"] for r in rows if r["fold"] == fold}
        absent = [s for s in slides if s not in assigned]
        if absent:
            raise ConfigError(path, f"fold {fold} does not assign {len(absent)} slide(s), e.g. {absent[0]}")
        if not any(r["split"] == "test" for r in rows if r["fold"] == fold):
            raise ConfigError(path, f"fold {fold} has no test slides")
    return rows


def check_grouping(rows: list[dict]) -> None:
    """ConfigError if any fold puts one case on both sides of train/val and test."""
    for fold in sorted({r["fold"] for r in rows}):
        sides: dict[str, set] = {}
        for r in rows:
            if r["fold"] == fold:
                sides.setdefault(r["case_id"], set()).add(r["split"] == "test")
        split_cases = [c for c, s in sides.items() if len(s) > 1]
        if split_cases:
            raise ConfigError(None, f"fold {fold} puts case {split_cases[0]} in both training and test")
