"""`pathgen mil`: a planted MIL task, metrics against scikit-learn, case-grouped folds, outputs, clear errors."""

import csv
import json

import h5py
import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)
from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.config import load_config
from pathgen.errors import ConfigError
from pathgen.mil.config import MILConfig
from pathgen.mil.metrics import METRICS, bootstrap_ci, compute_metrics
from pathgen.mil.models import ABMIL, MeanPool, TransMIL, load_model
from pathgen.mil.splits import make_splits
from pathgen.mil.synthetic import write_synthetic_bags
from pathgen.mil.train import train_mil


def _cfg(*overrides: str) -> MILConfig:
    return load_config(MILConfig, "configs/mil/tiny_cpu.yaml", [
        "model.hidden_dim=32", "model.attn_dim=16", "train.epochs=8", "train.lr=2e-3", "metrics.bootstrap=50",
        *overrides])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """60 bags of 120 patches (16-d); positive bags hold 2 planted patches shifted by 6 along one direction."""
    root = tmp_path_factory.mktemp("planted")
    labels = write_synthetic_bags(root, n_bags=60, n_instances=120, dim=16, n_planted=2, signal=6.0, seed=0)
    return root / "features_synthetic", labels


@pytest.fixture(scope="module")
def abmil_run(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("abmil")
    return out, train_mil(*planted, out, _cfg(), folds=3, model="abmil", progress=False)


def test_abmil_solves_the_planted_task_and_attends_to_the_planted_patches(planted, abmil_run):
    out, result = abmil_run
    assert result["summary"]["auc"]["pooled"] >= 0.95
    assert result["summary"]["auc"]["mean"] >= 0.95
    # Attention within each positive bag ranks the planted patches above the background (instance-level AUROC).
    model, _ = load_model(out / "models" / "fold0.safetensors")
    aurocs = []
    for path in sorted(planted[0].glob("*.h5")):
        with h5py.File(path) as f:
            planted_mask = f["planted"][:]
            if planted_mask.any():
                with torch.inference_mode():
                    _, attention = model(torch.from_numpy(f["features"][:]))
                aurocs.append(roc_auc_score(planted_mask, attention.numpy()))
    assert np.mean(aurocs) >= 0.95


def test_mean_pooling_does_measurably_worse_when_positives_are_rare(planted, abmil_run, tmp_path):
    result = train_mil(*planted, tmp_path, _cfg(), folds=3, model="meanpool", progress=False)
    assert result["summary"]["auc"]["pooled"] <= abmil_run[1]["summary"]["auc"]["pooled"] - 0.15


def test_outputs_metrics_json_predictions_splits_and_checkpoints(planted, abmil_run, tmp_path):
    out, result = abmil_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == result and set(saved) == {"summary", "folds", "classes"}
    assert saved["classes"] == ["negative", "positive"]
    for name in METRICS:
        entry = saved["summary"][name]
        assert set(entry) == {"mean", "std", "pooled", "ci95"}
        assert entry["ci95"][0] <= entry["pooled"] <= entry["ci95"][1]
        assert entry["mean"] == pytest.approx(np.mean([f[name] for f in saved["folds"]]))
    assert [f["fold"] for f in saved["folds"]] == [0, 1, 2]
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(preds) == 60 and {p["slide_id"] for p in preds} == {f"bag_{i:04d}" for i in range(60)}
    row = preds[0]
    assert set(row) >= {"slide_id", "case_id", "label", "fold", "pred", "prob_negative", "prob_positive"}
    assert float(row["prob_negative"]) + float(row["prob_positive"]) == pytest.approx(1.0)
    y = np.array([p["label"] == "positive" for p in preds])
    assert roc_auc_score(y, [float(p["prob_positive"]) for p in preds]) == pytest.approx(
        saved["summary"]["auc"]["pooled"])
    for k in range(3):
        model, meta = load_model(out / "models" / f"fold{k}.safetensors")
        assert isinstance(model, ABMIL) and meta["classes"] == ["negative", "positive"] and meta["in_dim"] == 16

    # --splits reuses the folds exactly; predict writes per-slide probabilities from the fold ensemble
    runner = CliRunner()
    again = tmp_path / "again"
    r = runner.invoke(app, ["mil", "train", "-f", str(planted[0]), "-l", str(planted[1]), "-o", str(again),
                            "--config", "configs/mil/tiny_cpu.yaml", "--splits", str(out / "splits.csv"),
                            "train.epochs=1", "metrics.bootstrap=0"])
    assert r.exit_code == 0, r.output
    assert (again / "splits.csv").read_text() == (out / "splits.csv").read_text()
    assert "AUC" in r.output and "pooled" in r.output  # the console table
    r = runner.invoke(app, ["mil", "predict", "-m", str(out), "-f", str(planted[0]), "-o", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 60 and {r["pred"] for r in rows} <= {"negative", "positive"}


def test_seeds_on_one_held_out_split(planted, tmp_path):
    r = CliRunner().invoke(app, ["mil", "train", "-f", str(planted[0]), "-l", str(planted[1]), "-o", str(tmp_path),
                                 "--config", "configs/mil/tiny_cpu.yaml", "--seeds", "2", "--model", "transmil",
                                 "train.epochs=1", "model.hidden_dim=16", "model.n_heads=2", "metrics.bootstrap=0"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert [(f["fold"], f["seed"]) for f in result["folds"]] == [(0, 0), (0, 1)]
    assert (tmp_path / "models" / "fold0_seed1.safetensors").is_file()
    splits = list(csv.DictReader(open(tmp_path / "splits.csv")))
    assert {s["fold"] for s in splits} == {"0"} and 0 < sum(s["split"] == "test" for s in splits) < 60


def test_metrics_match_scikit_learn_on_fixed_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, 40), 0, 1)
    binary = compute_metrics(y, np.stack([1 - p1, p1], 1))
    pred = (p1 > 0.5).astype(int)
    assert binary["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert binary["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert binary["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert binary["auc"] == pytest.approx(roc_auc_score(y, p1))
    assert binary["auprc"] == pytest.approx(average_precision_score(y, p1))

    y3 = np.arange(60) % 3
    logits = rng.standard_normal((60, 3)) + 1.5 * np.eye(3)[y3]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    multi = compute_metrics(y3, probs)
    pred3 = probs.argmax(1)
    assert multi["accuracy"] == pytest.approx(accuracy_score(y3, pred3))
    assert multi["f1_macro"] == pytest.approx(f1_score(y3, pred3, average="macro"))
    assert multi["auc"] == pytest.approx(roc_auc_score(y3, probs, multi_class="ovr", average="macro"))
    onehot = np.eye(3)[y3]
    assert multi["auprc"] == pytest.approx(average_precision_score(onehot, probs, average="macro"))
    assert np.isnan(compute_metrics(np.zeros(4, int), np.full((4, 2), 0.5))["auc"])  # one class: undefined
    ci = bootstrap_ci(y3, probs, cases=[f"c{i}" for i in range(60)], n=30, seed=0)
    assert ci["auc"][0] < multi["auc"] < ci["auc"][1]


def test_quadratic_weighted_kappa_by_hand():
    y = np.array([0, 1, 2, 3, 3, 2, 0, 1])
    pred = np.array([0, 2, 2, 3, 1, 2, 1, 1])
    k = 4
    observed = np.zeros((k, k))
    for a, b in zip(y, pred, strict=True):
        observed[a, b] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)]) / (k - 1) ** 2
    by_hand = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert compute_metrics(y, np.eye(k)[pred])["qwk"] == pytest.approx(by_hand)
    # with class 2 never predicted or present, the ordinal distance 1 -> 3 still counts as 2 steps
    y2, p2 = np.array([0, 1, 3, 3]), np.array([0, 3, 3, 1])
    observed = np.zeros((k, k))
    for a, b in zip(y2, p2, strict=True):
        observed[a, b] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    assert compute_metrics(y2, np.eye(k)[p2])["qwk"] == pytest.approx(
        1 - (weights * observed).sum() / (weights * expected).sum())


def test_case_grouped_folds_never_split_a_case():
    rng = np.random.default_rng(1)
    cases = [f"case{rng.integers(0, 25)}" for _ in range(80)]
    y = rng.integers(0, 3, 80)
    slides = [f"s{i}" for i in range(80)]
    rows = make_splits(slides, y, cases, folds=5, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert len(rows) == 5 * 80
    tested = []
    for fold in range(5):
        sides: dict = {}
        for r in rows:
            if r["fold"] == fold:
                sides.setdefault(r["case_id"], set()).add(r["split"])
                if r["split"] == "test":
                    tested.append(r["slide_id"])
        assert all(len(s) == 1 for s in sides.values())  # a case is wholly train, val or test
        assert any("val" in s for s in sides.values())
    assert sorted(tested) == sorted(slides)  # every slide is tested exactly once


def test_label_and_feature_mismatches_are_clear(planted, tmp_path):
    features, labels = planted
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,label\nbag_0000,positive\n")
    with pytest.raises(ConfigError, match="slide_id,label"):
        train_mil(features, bad, tmp_path / "a", _cfg(), progress=False)
    bad.write_text("slide_id,label\nbag_0000,positive\nbag_0000,negative\n")
    with pytest.raises(ConfigError, match="line 3: slide bag_0000 is listed twice"):
        train_mil(features, bad, tmp_path / "a", _cfg(), progress=False)
    bad.write_text("slide_id,label\nother_1,positive\nother_2,negative\n")
    with pytest.raises(ConfigError, match="none of its 2 slides has a non-empty feature file"):
        train_mil(features, bad, tmp_path / "a", _cfg(), progress=False)
    with pytest.raises(ConfigError, match="model.name"):
        train_mil(features, labels, tmp_path / "a", _cfg(), model="clam", progress=False)

    # listed without features / features without a label: reported in skipped.csv, the rest trains
    part = tmp_path / "part.csv"
    rows = open(labels).read().splitlines()
    part.write_text("\n".join(rows[:1] + rows[1:41] + ["ghost_slide,positive,ghost"]) + "\n")
    result = train_mil(features, part, tmp_path / "b", _cfg("train.epochs=1", "metrics.bootstrap=0"),
                       folds=2, progress=False)
    skipped = {r["slide_id"]: r["reason"] for r in csv.DictReader(open(tmp_path / "b" / "skipped.csv"))}
    assert skipped["ghost_slide"] == "no feature file" and skipped["bag_0059"] == "not in the labels"
    assert len(skipped) == 21 and sum(f["n_test"] for f in result["folds"]) == 40

    wide = tmp_path / "wide" / "features_x"
    wide.mkdir(parents=True)
    for i, d in enumerate((16, 8)):
        with h5py.File(wide / f"bag_{i:04d}.h5", "w") as f:
            f.create_dataset("features", data=np.zeros((3, d), np.float32))
            f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    with pytest.raises(ConfigError, match="mixed encoders"):
        train_mil(wide, labels, tmp_path / "c", _cfg(), progress=False)
    r = CliRunner().invoke(app, ["mil", "train", "-f", str(wide), "-l", str(labels), "-o", str(tmp_path / "d")])
    assert r.exit_code == 1 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1


def test_models_give_logits_and_attention_over_any_bag_size():
    torch.manual_seed(0)
    for model in (ABMIL(16, 6, 32, 16), TransMIL(16, 6, 32, 4), MeanPool(16, 6)):
        model.eval()
        for n in (1, 7, 50):
            logits, attention = model(torch.randn(n, 16))
            assert logits.shape == (6,) and attention.shape == (n,)
            assert float(attention.detach().sum()) == pytest.approx(1.0, abs=1e-5) and (attention >= 0).all()


def test_labels_can_be_the_tiling_manifest_of_a_labelled_slide_list(tmp_path):
    from pathgen.mil.data import read_labels
    from pathgen.store.manifest import ManifestRow, write_manifest

    manifest = write_manifest(tmp_path / "manifest.csv", [
        ManifestRow("/s/a.svs", "ok", 5, store="a.zarr", extra={"label": "tumour", "case_id": "p1"}),
        ManifestRow("/s/b.svs", "failed", error="unreadable", extra={"label": "normal", "case_id": "p1"}),
        ManifestRow("/s/dup/a.svs", "skipped", 3, store="dup_a.zarr", extra={"label": "normal", "case_id": ""}),
        ManifestRow("/s/c.svs", "ok", 4, store="c.zarr", extra={"label": "", "case_id": "p3"}),  # pretraining only
    ])
    # slides are named by their stores, as the feature files are; a slide that failed to tile has none
    assert read_labels(manifest) == [("a", "tumour", "p1"), ("dup_a", "normal", "dup_a")]


def test_one_progress_display_for_all_folds(planted, tmp_path, capsys, monkeypatch):
    """In a log (not a terminal) cross-validation is one bar over every fold's epochs, not a bar per fold."""
    monkeypatch.setenv("PATHGEN_PROGRESS_SECONDS", "0")  # a line per update, so every bar that exists shows
    train_mil(*planted, tmp_path, _cfg("train.epochs=2", "metrics.bootstrap=0"), folds=3, model="meanpool")
    err = capsys.readouterr().err
    assert not any(line.startswith("fold") for line in err.splitlines())  # the per-fold bars
    lines = [line for line in err.splitlines() if line.startswith("mil")]
    assert lines and "6/6" in lines[-1] and "fold2" in lines[-1]
