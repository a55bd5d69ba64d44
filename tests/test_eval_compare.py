"""`pathgen eval compare`: several encoders, one table of kNN and linear-probe results, as JSON and CSV."""

import csv
import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.eval.run import evaluate_encoder

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_cli import folder  # noqa: E402, F401  (the fixture: two colour classes, 8 images each)

ENCODERS = ["timm:vit_tiny_patch16_224", "timm:resnet18"]


def test_one_table_of_knn_and_linear_probe_for_several_encoders(folder, tmp_path):  # noqa: F811
    stem = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["eval", "compare", *ENCODERS, "--train", str(folder), "--img-size", "32",
                                      "--device", "cpu", "--batch-size", "8", "--out", str(stem)])
    assert result.exit_code == 0, result.output
    assert "timm:resnet18" in result.output and "linear top-1 %" in result.output
    table = json.loads((tmp_path / "cmp.json").read_text())
    rows = list(csv.DictReader((tmp_path / "cmp.csv").open()))
    assert [r["encoder"] for r in rows] == [r["encoder"] for r in table["rows"]] == ENCODERS
    assert table["k"] == 20 and table["classes"] == ["lesion", "normal"]
    assert [r["feature_dim"] for r in table["rows"]] == [192, 512]
    for row, line in zip(table["rows"], rows, strict=True):
        assert 0 <= row["knn_top1"] <= 1 and 0 <= row["linear_balanced_acc"] <= 1
        assert float(line["knn_top1"]) == row["knn_top1"] and int(line["n_test"]) == row["n_test"]
    # each row is what `pathgen eval knn` / `linear` report for that encoder with the same data and seed
    alone = evaluate_encoder("knn", ENCODERS[1], [str(folder)], img_size=32, ks=(20,), batch_size=8, device="cpu",
                             progress=False)
    assert table["rows"][1]["knn_top1"] == alone["top1"] and table["runs"][ENCODERS[1]]["knn"]["n_test"] == alone[
        "n_test"]


def test_one_progress_display_for_all_encoders(folder, capsys, monkeypatch):  # noqa: F811
    """In a log (not a terminal) the comparison is one bar counting every encoder's images, not a bar per encode."""
    from pathgen.eval.compare import compare_encoders

    monkeypatch.setenv("PATHGEN_PROGRESS_SECONDS", "0")  # a line per update, so every bar that exists shows
    table = compare_encoders(ENCODERS, [str(folder)], img_size=32, batch_size=8, device="cpu")
    err = capsys.readouterr().err
    assert "features" not in err  # the per-encode bars of extract_features
    lines = [line for line in err.splitlines() if line.startswith("compare")]
    n_images = sum(row["n_train"] + row["n_test"] for row in table["rows"])
    assert lines and f"{n_images}img" in lines[-1].replace(" ", "")
    assert "encoder 2/2" in lines[-1]
