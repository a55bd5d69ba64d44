"""Slide-level classification metrics (scikit-learn), their mean ± std over folds and bootstrap CIs.

    accuracy, balanced_accuracy, f1_macro   from the arg-max prediction
    auc      binary ROC AUC, or one-vs-rest macro over the classes present in y (each needs +/- examples)
    auprc    average precision, likewise (binary: of the second class; multi-class: one-vs-rest macro)
    qwk      Cohen's kappa with quadratic weights over all classes in order (ISUP grades are ordinal)
A metric that is undefined on a set (e.g. AUC with a single class) is NaN, and null in JSON.
"""

import math
import warnings

import numpy as np

METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auc", "auprc", "qwk")


def _one_vs_rest(score, y: np.ndarray, probs: np.ndarray) -> float:
    per_class = [score(y == c, probs[:, c]) for c in range(probs.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(per_class)) if per_class else math.nan


def compute_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Every metric of METRICS for labels y [n] and class probabilities probs [n, C]."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        f1_score,
        roc_auc_score,
    )

    y, probs = np.asarray(y, np.int64), np.asarray(probs, np.float64)
    pred = probs.argmax(1)
    n_classes = probs.shape[1]
    with warnings.catch_warnings():  # classes absent from a small fold: sklearn warns, the value is still right
        warnings.simplefilter("ignore")
        out = {
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
        }
        if n_classes == 2:
            both = 0 < y.sum() < len(y)
            out["auc"] = float(roc_auc_score(y, probs[:, 1])) if both else math.nan
            out["auprc"] = float(average_precision_score(y, probs[:, 1])) if both else math.nan
        else:
            out["auc"] = _one_vs_rest(roc_auc_score, y, probs)
            out["auprc"] = _one_vs_rest(average_precision_score, y, probs)
        kappa = cohen_kappa_score(y, pred, weights="quadratic", labels=np.arange(n_classes))
        out["qwk"] = float(kappa) if np.isfinite(kappa) else math.nan
    return out


def mean_std(runs: list[dict]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "std"}} over runs (population std, NaN runs left out)."""
    out = {}
    for name in METRICS:
        values = np.array([r[name] for r in runs], np.float64)
        values = values[np.isfinite(values)]
        out[name] = {"mean": float(values.mean()) if len(values) else math.nan,
                     "std": float(values.std()) if len(values) else math.nan}
    return out


def bootstrap_ci(y: np.ndarray, probs: np.ndarray, cases, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """Percentile CIs of every metric, resampling cases (with all their slides) with replacement."""
    if n <= 0:
        return {name: [math.nan, math.nan] for name in METRICS}
    _, case_of = np.unique(np.asarray(cases, dtype=str), return_inverse=True)
    members = [np.flatnonzero(case_of == c) for c in range(case_of.max() + 1)]
    import sklearn

    rng = np.random.default_rng(seed)
    draws = {name: [] for name in METRICS}
    with sklearn.config_context(skip_parameter_validation=True):  # inputs were checked once; ~25% per call
        for _ in range(n):
            idx = np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))])
            for name, value in compute_metrics(y[idx], probs[idx]).items():
                draws[name].append(value)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for name, values in draws.items():
        values = np.array(values)
        values = values[np.isfinite(values)]
        out[name] = [float(np.percentile(values, lo)), float(np.percentile(values, hi))] if len(values) else [
            math.nan, math.nan]
    return out


def json_safe(value):
    """NaN -> None, recursively, so metrics.json stays valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
