"""`pathgen demo` end to end on a tiny cohort: every step runs and leaves its artefacts; a rerun reuses them."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathgen.cli import app

TINY = [
    "cohort.n_slides=4", "cohort.width=1024", "cohort.height=768", "tile.workers=1", "labelled.n_per_class=20",
    "labelled.n_slides=2", "labelled.width=1024", "labelled.height=768",
    "ssl:run.max_steps=2", "ssl:data.batch_size=8", "ssl:data.num_workers=0",
    "diffusion:run.max_steps=2", "diffusion:data.batch_size=8", "diffusion:data.held_out=2",
    "generate.max_sources=8", "generate.steps=2", "generate.batch_size=8",
    "gensis:run.max_steps=2", "gensis:data.batch_size=8", "gensis:data.num_workers=0",
    "mil_dino:train.epochs=2", "mil_dino:cv.folds=2", "mil_gensis:train.epochs=2", "mil_gensis:cv.folds=2",
]
STEPS = 12


@pytest.mark.slow
def test_demo_runs_every_stage_writes_its_summary_and_reuses_the_steps(tmp_path):
    out = tmp_path / "demo out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert (out / "cohort" / "labels.csv").is_file()
    assert len(list((out / "tile" / "qc").glob("*.png"))) == 4
    assert (out / "ssl" / "encoder.safetensors").is_file() and (out / "gensis" / "encoder.safetensors").is_file()
    assert (out / "diffusion" / "model" / "model_index.json").is_file()

    summary = json.loads((out / "summary.json").read_text())
    # the shape scripts rely on (issue 12): top-1 values in percent
    assert set(summary["knn"]) == {"random", "dino", "gensis"} and all(0 <= v <= 100 for v in summary["knn"].values())
    assert summary["fidelity"]["chance"] == pytest.approx(100 / summary["fidelity"]["n_candidates"], abs=0.01)
    assert 0 <= summary["fidelity"]["retrieval_top1"] <= 100
    assert set(summary["mil"]) == {"dino", "gensis"} and all("auc" in m for m in summary["mil"].values())
    assert summary["patches"] > 0 and summary["seconds"] > 0
    assert summary["n_test"] == 2 * 20  # the labelled step's own test folder (held-out slides), not a split of train
    pictures = summary["pictures"]
    assert set(pictures) == {"qc", "views", "labelled examples", "generation grid", "attention heatmap"}
    assert all(Path(p).exists() for p in pictures.values())
    record = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in record["steps"].values()] == ["done"] * STEPS

    mtime = (out / "gensis" / "encoder.safetensors").stat().st_mtime_ns
    rerun = CliRunner().invoke(app, ["demo", "--out", str(out), *TINY])
    assert rerun.exit_code == 0, rerun.output
    assert f"0 step(s) run, {STEPS} skipped" in rerun.output
    assert (out / "gensis" / "encoder.safetensors").stat().st_mtime_ns == mtime


def test_demo_rejects_unknown_setting(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "tile.patchsize=32"])
    assert result.exit_code == 1
    assert "steps.tile.with.patchsize: unknown key" in result.output
