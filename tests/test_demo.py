"""`pathgen demo` end to end on a tiny cohort: every step runs and leaves its artefacts; a rerun reuses them."""

import json

import pytest
from typer.testing import CliRunner

from pathgen.cli import app

TINY = [
    "cohort.n_slides=2", "cohort.width=1024", "cohort.height=768", "tile.workers=1", "labelled.n_per_class=20",
    "labelled.n_slides=2", "labelled.width=1024", "labelled.height=768",
    "ssl:run.max_steps=2", "ssl:data.batch_size=8", "ssl:data.num_workers=0",
]


@pytest.mark.slow
def test_demo_runs_every_step_and_reuses_them(tmp_path):
    out = tmp_path / "demo out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert (out / "cohort" / "labels.csv").is_file()
    assert sorted(p.name for p in (out / "tile" / "qc").glob("*.png")) == ["slide_000.png", "slide_001.png"]
    assert (out / "ssl" / "encoder.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["knn"]) == {"random", "dino"} and all(0 <= v <= 100 for v in summary["knn"].values())
    assert summary["patches"] > 0 and summary["seconds"] > 0
    assert summary["n_test"] == 2 * 20  # the labelled step's own test folder (held-out slides), not a split of train
    assert (out / "labelled" / "patches" / "examples.png").is_file()
    record = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in record["steps"].values()] == ["done"] * 5

    mtime = (out / "ssl" / "encoder.safetensors").stat().st_mtime_ns
    rerun = CliRunner().invoke(app, ["demo", "--out", str(out), *TINY])
    assert rerun.exit_code == 0, rerun.output
    assert "0 step(s) run, 5 skipped" in rerun.output
    assert (out / "ssl" / "encoder.safetensors").stat().st_mtime_ns == mtime


def test_demo_rejects_unknown_setting(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "tile.patchsize=32"])
    assert result.exit_code == 1
    assert "steps.tile.with.patchsize: unknown key" in result.output
