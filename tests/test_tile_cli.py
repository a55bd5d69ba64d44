"""`pathgen tile` through typer's CliRunner: success, failures, bad options, skip on rerun."""

import shutil

from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.store import find_stores, open_store, read_manifest

runner = CliRunner()


def test_tile_h5_then_rerun_skips(demo_slides, tmp_path):
    slides = tmp_path / "my slides"
    slides.mkdir()
    for s in demo_slides[:2]:
        shutil.copy(s, slides)
    args = ["tile", str(slides), "--out", str(tmp_path / "out"), "--mpp", "0.5", "--patch-size", "32"]
    result = runner.invoke(app, [*args, "--format", "h5"])
    assert result.exit_code == 0, result.output
    assert "slides: 2  ok: 2" in result.output and "manifest:" in result.output
    stores = find_stores(tmp_path / "out" / "manifest.csv")
    assert [p.suffix for p in stores] == [".h5", ".h5"]
    with open_store(stores[0]) as store:
        assert store.attrs["target_mpp"] == 0.5 and store.patch_size == 32 and store.has_images

    again = runner.invoke(app, [*args, "--format", "h5"])
    assert again.exit_code == 0 and "skipped: 2" in again.output
    coords_only = runner.invoke(app, [*args, "--format", "h5", "--coords-only"])  # new parameters: redone
    assert coords_only.exit_code == 0 and "ok: 2" in coords_only.output
    with open_store(stores[0]) as store:
        assert not store.has_images and len(store) > 0


def test_failed_slide_exits_non_zero(demo_slide, tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"\x00" * 1000)
    args = ["tile", str(demo_slide), str(bad), "--out", str(tmp_path / "out"), "--patch-size", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "failed: 1" in result.output and "broken.svs" in result.output
    rows = {r.status for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert rows == {"ok", "failed"}


def test_bad_options_are_one_line_errors(demo_slide, tmp_path):
    for extra, needle in [
        (["--shard", "2/2"], "shard"),
        (["--format", "parquet"], "format"),
        (["--mpp", "-1"], "mpp"),
    ]:
        result = runner.invoke(app, ["tile", str(demo_slide), "--out", str(tmp_path), *extra])
        assert result.exit_code == 1, extra
        assert needle in result.output and result.output.count("\n") == 1 and "Traceback" not in result.output
    missing = runner.invoke(app, ["tile", str(tmp_path / "missing.svs"), "--out", str(tmp_path)])
    assert missing.exit_code == 1 and "missing.svs" in missing.output


def test_help_lists_the_options():
    result = runner.invoke(app, ["tile", "--help"])
    assert result.exit_code == 0
    for option in ("--mpp", "--patch-size", "--format", "--workers", "--shard", "--tissue-threshold", "--coords-only",
                   "--reader", "--slide-mpp", "--overwrite", "--magnification", "--overlap", "--roi"):  # fmt: skip
        assert option in result.output


def test_manifest_merge_combines_an_array_jobs_shards(demo_cohort, tmp_path):
    out = tmp_path / "out"
    base = ["tile", str(demo_cohort), "--out", str(out), "--patch-size", "32", "--coords-only", "--workers", "0"]
    assert runner.invoke(app, [*base, "--shard", "0/2"]).exit_code == 0
    result = runner.invoke(app, ["manifest", "merge", str(out)])
    assert result.exit_code == 1 and "shard(s) 1 of 2" in result.output and not (out / "manifest.csv").exists()
    assert runner.invoke(app, [*base, "--shard", "1/2"]).exit_code == 0
    result = runner.invoke(app, ["manifest", "merge", str(out)])
    assert result.exit_code == 0, result.output
    assert "slides: 4  ok: 4" in result.output and (out / "summary.txt").is_file()
    rows = read_manifest(out / "manifest.csv")
    assert [r.slide for r in rows] == sorted(r.slide for r in rows) and len(rows) == 4
    assert {r.extra["label"] for r in rows} == {"positive", "negative"}  # labels.csv's label column came along
    assert len(find_stores(out / "manifest.csv")) == 4


def test_reader_and_codec_options_reach_the_store(demo_slide, tmp_path):
    args = ["tile", str(demo_slide), "--out", str(tmp_path), "--mpp", "0.5", "--patch-size", "32"]
    result = runner.invoke(app, [*args, "--reader", "openslide", "--codec", "webp", "--quality", "70"])
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / f"{demo_slide.stem}.zarr") as store:
        assert (store.attrs["reader"], store.attrs["codec"], store.attrs["quality"]) == ("openslide", "webp", 70)
        assert store[0].shape == (32, 32, 3)
    bad = runner.invoke(app, [*args, "--codec", "png"])
    assert bad.exit_code == 1 and "--codec must be one of lossless, jpeg, webp" in bad.output
