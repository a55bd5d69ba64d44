"""`pathgen demo` end to end on a tiny cohort: every stage runs and leaves its artefacts; a rerun reuses them."""

import json

import pytest
from typer.testing import CliRunner

from pathgen.cli import app

TINY = [
    "cohort.n_slides=2", "cohort.width=1024", "cohort.height=768", "tile.workers=1",
    "eval.n_per_class=20", "ssl.overrides=[run.max_steps=2, data.batch_size=8, data.num_workers=0]",
]


@pytest.mark.slow
def test_demo_runs_every_stage_and_reuses_them(tmp_path):
    out = tmp_path / "demo out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert (out / "cohort" / "labels.csv").is_file()
    assert sorted(p.name for p in (out / "patches" / "qc").glob("*.png")) == ["slide_000.png", "slide_001.png"]
    assert (out / "ssl" / "encoder.safetensors").is_file()
    knn = json.loads((out / "eval" / "knn.json").read_text())
    assert set(knn) == {"pathgen DINO", "random init"}
    assert all(0.0 <= r["top1"] <= 1.0 for r in knn.values())

    mtime = (out / "ssl" / "encoder.safetensors").stat().st_mtime_ns
    rerun = CliRunner().invoke(app, ["demo", "--out", str(out), *TINY])
    assert rerun.exit_code == 0, rerun.output
    assert "encoder exists" in rerun.output
    assert (out / "ssl" / "encoder.safetensors").stat().st_mtime_ns == mtime


def test_demo_rejects_unknown_setting(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "tile.patchsize=32"])
    assert result.exit_code == 1
    assert "tile.patchsize: unknown key" in result.output
