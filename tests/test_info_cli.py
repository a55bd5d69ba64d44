"""`pathgen info` through typer's CliRunner."""

import shutil

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pathgen.cli import app

runner = CliRunner()


def test_info_prints_format_levels_mpp_and_power(demo_slide):
    result = runner.invoke(app, ["info", str(demo_slide)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert demo_slide.name in out and "aperio" in out
    assert "1024 x 768" in out
    assert "0: 1024x768 (/1), 1: 256x192 (/4)" in out
    assert "0.25 (metadata)" in out and "40x" in out
    assert "tifffile" in out  # the reader that decodes it


def test_info_slide_mpp_override_and_plain_image(tmp_path):
    png = tmp_path / "plain ü.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png)
    result = runner.invoke(app, ["info", str(png), "--slide-mpp", "0.5"])
    assert result.exit_code == 0, result.output
    assert "image/png" in result.stdout and "0.5 (fallback)" in result.stdout and "30 x 20" in result.stdout
    result = runner.invoke(app, ["info", str(png), "--mpp", "0.3", "--slide-mpp", "0.5"])
    assert result.exit_code == 0 and "0.3 (override)" in result.stdout


def test_info_bad_slides_fail_one_line_each_and_others_still_print(demo_slide, tmp_path):
    bad = tmp_path / "broken slide.svs"
    bad.write_text("not a slide")
    no_mpp = tmp_path / "no_mpp.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(no_mpp)
    good = tmp_path / "gööd.svs"
    shutil.copy(demo_slide, good)
    result = runner.invoke(app, ["info", str(bad), str(good), str(no_mpp), str(tmp_path / "missing.svs")])
    assert result.exit_code == 1
    assert "gööd.svs" in result.stdout and "0.25 (metadata)" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 3
    assert errors[0].startswith(f"error: {bad}: ")
    assert errors[1] == f"error: {no_mpp}: no microns-per-pixel in metadata or objective power; " + (
        "pass --slide-mpp or an mpp column"
    )
    assert "missing.svs: no such file" in errors[2]


def test_info_help_describes_the_command():
    result = runner.invoke(app, ["info", "--help"])
    assert result.exit_code == 0
    assert "--slide-mpp" in result.stdout and "--reader" in result.stdout and "objective" in result.stdout
