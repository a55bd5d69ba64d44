"""`pathgen mil train`: cross-validated slide classifiers on patch features, with honest out-of-fold metrics.

Per fold (and seed): class-weighted cross-entropy, AdamW, one bag per step, early stopping on the validation
loss of a case-grouped split carved from the training slides; the best epoch's weights predict the test slides.

    OUT/config.yaml                   the full config
    OUT/splits.csv                    slide_id,case_id,fold,split (reusable with --splits)
    OUT/models/fold<F>[_seed<S>].safetensors
    OUT/logs/fold<F>[_seed<S>]/       log.jsonl and TensorBoard events, one step per epoch
    OUT/predictions.csv               out-of-fold probabilities, one row per slide and run
    OUT/metrics.json                  {"summary": {metric: {mean, std, pooled, ci95}}, "folds": [...], "classes"}
    OUT/skipped.csv                   slides without features / without a label / without patches
"""

import copy
import csv
import json
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pathgen.errors import ConfigError
from pathgen.mil.config import MILConfig
from pathgen.mil.data import BagDataset, Cohort, load_cohort
from pathgen.mil.metrics import METRICS, bootstrap_ci, compute_metrics, json_safe, mean_std
from pathgen.mil.models import build_model, save_model


def run_name(fold: int, seed_index: int, n_seeds: int) -> str:
    return f"fold{fold}" if n_seeds == 1 else f"fold{fold}_seed{seed_index}"


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (C * count_c), sklearn's 'balanced' weights; a class absent from training weighs 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _loader(dataset: BagDataset, shuffle: bool, seed: int, workers: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=None, shuffle=shuffle, generator=g, num_workers=workers,
                      persistent_workers=workers > 0)


@torch.inference_mode()
def predict_bags(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                 weight: torch.Tensor | None = None, precision=None) -> tuple[np.ndarray, float]:
    """(softmax probabilities [n, C], class-weighted mean cross-entropy) over a loader of (bag, label)."""
    from pathgen.runtime.device import precision_for

    precision = precision or precision_for(device)
    model.eval()
    probs, losses, weights = [], [], []
    for x, y in loader:
        with precision.autocast():
            logits, _ = model(x.to(device, non_blocking=True))
        logits = logits.float()
        probs.append(torch.softmax(logits, -1).cpu())
        losses.append(float(F.cross_entropy(logits[None], torch.tensor([int(y)], device=device))))
        weights.append(float(weight[int(y)]) if weight is not None else 1.0)
    if not probs:
        return np.zeros((0, 0)), float("nan")
    w = np.asarray(weights)
    return torch.stack(probs).numpy(), float((np.asarray(losses) * w).sum() / max(w.sum(), 1e-12))


def train_run(cfg: MILConfig, cohort: Cohort, train: np.ndarray, val: np.ndarray, seed: int, device: torch.device,
              log_dir: Path | None = None, progress: bool = True, bar=None) -> tuple[torch.nn.Module, dict]:
    """Train one model on cohort slides `train`, early-stopped on `val`; returns (best model on CPU, summary).

    Per epoch, `log_dir` gets a log.jsonl line and TensorBoard scalars (train/loss, val/loss, val/<metric>, seconds).
    `bar`: a progress bar of the caller's (one display for all folds) that gets cfg.train.epochs steps from this
    run, the epochs early stopping skipped included; without it, and with `progress`, the run shows its own.
    """
    from pathgen.runtime.device import precision_for
    from pathgen.runtime.progress import progress_bar_or
    from pathgen.runtime.runlog import RunLog
    from pathgen.runtime.seeding import seed_everything

    seed_everything(seed)
    precision = precision_for(device, cfg.run.precision)
    n_classes = len(cohort.classes)
    model = build_model(cfg.model, cohort.in_dim, n_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = precision.grad_scaler()
    y_train = cohort.labels[train]
    weight = class_weights(y_train, n_classes).to(device) if cfg.train.class_weighted else None
    files = np.asarray(cohort.files, dtype=object)
    train_loader = _loader(BagDataset(files[train], y_train), True, seed, cfg.train.num_workers)
    val_loader = _loader(BagDataset(files[val], cohort.labels[val]), False, seed, cfg.train.num_workers)
    sampler = torch.Generator().manual_seed(seed + 1)  # instance subsets, separate from the bag order
    best = {"loss": float("inf"), "epoch": -1, "state": None}
    steps, stale, epoch = 0, 0, 0
    if log_dir is not None and log_dir.exists():  # a new run replaces an old one's log, never appends to it
        import shutil

        shutil.rmtree(log_dir)
    log = RunLog(log_dir, enabled=log_dir is not None)
    shared = bar is not None
    with progress_bar_or(bar, total=cfg.train.epochs, desc=log_dir.name if log_dir else "mil", unit="epoch",
                         leave=False, disable=not progress) as bar, closing(log):
        for epoch in range(cfg.train.epochs):
            t0 = time.perf_counter()
            model.train()
            total = 0.0
            for x, y in train_loader:
                if cfg.train.max_instances is not None and len(x) > cfg.train.max_instances:
                    x = x[torch.randperm(len(x), generator=sampler)[: cfg.train.max_instances]]
                with precision.autocast():
                    logits, _ = model(x.to(device, non_blocking=True))
                # One bag per step: a weighted *mean* over a batch of one cancels the weight, so scale explicitly.
                loss = F.cross_entropy(logits.float()[None], torch.tensor([int(y)], device=device))
                if weight is not None:
                    loss = loss * weight[int(y)]
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += float(loss.detach())
                steps += 1
                if cfg.run.max_steps is not None and steps >= cfg.run.max_steps:
                    break
            values = {"train/loss": total / max(1, len(train_loader))}
            if len(val):
                val_probs, val_loss = predict_bags(model, val_loader, device, weight, precision)
                values["val/loss"] = val_loss
                values.update({f"val/{k}": v for k, v in compute_metrics(cohort.labels[val], val_probs).items()})
                if val_loss < best["loss"] - 1e-6:
                    best.update(loss=val_loss, epoch=epoch, state=copy.deepcopy(model.state_dict()))
                    stale = 0
                else:
                    stale += 1
            values["seconds"] = time.perf_counter() - t0
            log.scalars(epoch, {k: v for k, v in values.items() if np.isfinite(v)}, epoch=epoch)
            bar.update(1)
            bar.set_postfix({k.replace("/loss", ""): f"{v:.3f}" for k, v in values.items() if k.endswith("loss")},
                            refresh=False)
            if cfg.run.max_steps is not None and steps >= cfg.run.max_steps:
                break
            if len(val) and epoch + 1 >= cfg.train.min_epochs and stale >= cfg.train.patience:
                break
        if shared:  # the epochs early stopping skipped (epoch + 1 ran), so that the caller's total stays right
            bar.update(max(0, cfg.train.epochs - (epoch + 1)))
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return model.cpu().eval(), {"epochs": epoch + 1, "best_epoch": best["epoch"] if len(val) else epoch}


def _resolve(cfg: MILConfig | None, folds, seeds, splits, model, out_dir) -> MILConfig:
    """The config with the keyword overrides applied and validated (ConfigError naming the key)."""
    from pydantic import ValidationError

    from pathgen.config import describe_error

    data = (cfg or MILConfig()).model_dump()
    for section, key, value in (("cv", "folds", folds), ("cv", "seeds", seeds), ("model", "name", model),
                                ("cv", "splits", None if splits is None else str(splits))):
        if value is not None:
            data[section][key] = value
    data["run"]["out_dir"] = str(out_dir)
    try:
        cfg = MILConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError("mil config", describe_error(err)) from None
    if cfg.cv.folds < 1 or cfg.cv.seeds < 1 or not 0 <= cfg.train.val_fraction < 1 or not 0 < cfg.cv.test_fraction < 1:
        raise ConfigError("mil config", "need cv.folds >= 1, cv.seeds >= 1, 0 <= train.val_fraction < 1 and "
                          "0 < cv.test_fraction < 1")
    return cfg


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["slide_id", "reason"])
        writer.writeheader()
        writer.writerows(rows)


def train_mil(
    features: str | Path,
    labels: str | Path,
    out_dir: str | Path,
    cfg: MILConfig | None = None,
    *,
    folds: int | None = None,
    seeds: int | None = None,
    splits: str | Path | None = None,
    model: str | None = None,
    progress: bool = True,
) -> dict:
    """Cross-validated MIL on the feature files of `features` (a features_<encoder>/ folder) and labels.csv.

    folds / seeds / splits / model override the config (`cfg.cv`, `cfg.model.name`). Returns what
    OUT/metrics.json holds: {"summary": {metric: {"mean", "std", "pooled", "ci95"}}, "folds": [...], "classes"}.
    """
    from pathgen import __version__
    from pathgen.config import save_config
    from pathgen.mil.report import print_metrics
    from pathgen.mil.splits import check_grouping, make_splits, read_splits, write_splits
    from pathgen.runtime.device import get_device, precision_for
    from pathgen.runtime.progress import progress_bar

    cfg = _resolve(cfg, folds, seeds, splits, model, out_dir)
    out = Path(out_dir)
    cohort = load_cohort(features, labels)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    _write_csv(out / "skipped.csv", [{"slide_id": s, "reason": why} for s, why in cohort.skipped])
    if cohort.skipped:
        listed = ", ".join(f"{s} ({why})" for s, why in cohort.skipped[:5])
        more = " ..." if len(cohort.skipped) > 5 else ""
        print(f"skipped {len(cohort.skipped)} slide(s) (see {out / 'skipped.csv'}): {listed}{more}")
    seed = cfg.run.seed
    if cfg.cv.splits:
        rows = read_splits(cfg.cv.splits, cohort.slides, cohort.cases)
    else:
        rows = make_splits(cohort.slides, cohort.labels, cohort.cases, cfg.cv.folds, cfg.train.val_fraction,
                           cfg.cv.test_fraction, seed)
    check_grouping(rows)
    write_splits(out / "splits.csv", rows)

    device = get_device(cfg.run.device)
    precision = precision_for(device, cfg.run.precision)
    index = {s: i for i, s in enumerate(cohort.slides)}
    encoder = _encoder_name(cohort.files[0])
    runs, predictions = [], []
    pooled_sum = np.zeros((len(cohort.slides), len(cohort.classes)))
    pooled_n = np.zeros(len(cohort.slides))
    fold_ids = sorted({r["fold"] for r in rows})
    bar = progress_bar(total=len(fold_ids) * cfg.cv.seeds * cfg.train.epochs, desc="mil", unit="epoch",
                       disable=not progress)
    for fold in fold_ids:
        part = {k: np.array([index[r["slide_id"]] for r in rows if r["fold"] == fold and r["split"] == k], np.int64)
                for k in ("train", "val", "test")}
        if not len(part["val"]) and cfg.train.val_fraction > 0 and cfg.cv.splits:  # a splits file without val rows
            from pathgen.mil.splits import carve_validation

            t = part["train"]
            cases = np.asarray(cohort.cases)[t]
            is_val = carve_validation(cohort.labels[t], cases, cfg.train.val_fraction, seed + fold)
            part["train"], part["val"] = t[~is_val], t[is_val]
        for s in range(cfg.cv.seeds):
            name = run_name(fold, s, cfg.cv.seeds)
            bar.set_description_str(f"mil {name}", refresh=False)
            net, info = train_run(cfg, cohort, part["train"], part["val"], seed + s, device, out / "logs" / name,
                                  progress, bar)
            test_loader = _loader(BagDataset(np.asarray(cohort.files, dtype=object)[part["test"]],
                                             cohort.labels[part["test"]]), False, seed, cfg.train.num_workers)
            probs, _ = predict_bags(net.to(device), test_loader, device, precision=precision)
            net.cpu()
            save_model(net, out / "models" / f"{name}.safetensors", {
                "model": cfg.model.model_dump(), "in_dim": cohort.in_dim, "classes": cohort.classes, "fold": fold,
                "seed": seed + s, "encoder": encoder, "pathgen_version": __version__})
            y = cohort.labels[part["test"]]
            runs.append({"fold": fold, "seed": seed + s, "n_train": len(part["train"]), "n_val": len(part["val"]),
                         "n_test": len(y), **info, **compute_metrics(y, probs)})
            pooled_sum[part["test"]] += probs
            pooled_n[part["test"]] += 1
            for i, p in zip(part["test"], probs, strict=True):
                predictions.append({
                    "slide_id": cohort.slides[i], "case_id": cohort.cases[i], "label": cohort.classes[cohort.labels[i]],
                    "fold": fold, "seed": seed + s, "pred": cohort.classes[int(p.argmax())],
                    **{f"prob_{c}": float(v) for c, v in zip(cohort.classes, p, strict=True)}})
    bar.close()
    _write_csv(out / "predictions.csv", predictions)

    # Pooled out-of-fold predictions: each test slide once (its probabilities averaged over seeds).
    tested = pooled_n > 0
    pooled = pooled_sum[tested] / pooled_n[tested, None]
    y_pooled = cohort.labels[tested]
    cases = np.asarray(cohort.cases)[tested]
    point = compute_metrics(y_pooled, pooled)
    ci = bootstrap_ci(y_pooled, pooled, cases, n=cfg.metrics.bootstrap, seed=seed)
    summary = mean_std(runs)
    for name in METRICS:
        summary[name].update(pooled=point[name], ci95=ci[name])
    result = json_safe({"summary": summary, "folds": runs, "classes": cohort.classes})
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    if progress:
        print_metrics(result, title=f"{cfg.model.name} on {Path(features).name}: {len(cohort.slides)} slides")
    return result


def _encoder_name(path: Path) -> str:
    from pathgen.features.h5 import read_feature_file

    return str(read_feature_file(path, features=False).attrs.get("encoder", ""))
