"""Typed configs: YAML + dotted overrides, and one-line errors that name the file and the key."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.config import load_config, save_config
from pathgen.errors import ConfigError
from pathgen.ssl.config import SSLConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ssl"


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "histo_vits16.yaml", "imagenet_vits16.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(SSLConfig, CONFIGS / name)
    assert cfg.data.global_scale == (0.4, 1.0) and cfg.data.local_scale == (0.05, 0.4)
    assert cfg.dino.student_temp == 0.1 and cfg.dino.center_momentum == 0.9


def test_recipes_say_what_they_promise():
    histo = load_config(SSLConfig, CONFIGS / "histo_vits16.yaml")
    assert (histo.model.name, histo.data.preset, histo.optim.epochs) == ("vit_small_patch16_224", "histo", 100)
    assert (histo.data.global_size, histo.data.local_size) == (224, 96)
    imnet = load_config(SSLConfig, CONFIGS / "imagenet_vits16.yaml")
    assert (imnet.optim.base_lr, imnet.data.batch_size, imnet.model.out_dim) == (0.0005, 64, 65536)
    assert imnet.model.norm_last_layer is False and imnet.data.n_local == 10 and imnet.optim.warmup_epochs == 10


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(
        SSLConfig,
        CONFIGS / "tiny_cpu.yaml",
        ["optim.base_lr=1e-3", "data.sources=[a.zarr, b.zarr]", "run.max_steps=7", "model.kwargs={depth: 2}",
         "run.device=cpu"],
    )
    assert cfg.optim.base_lr == 1e-3 and cfg.data.sources == ["a.zarr", "b.zarr"]
    assert cfg.run.max_steps == 7 and cfg.model.kwargs == {"depth": 2} and cfg.run.device == "cpu"
    # round trip through the YAML written next to every run
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(SSLConfig, tmp_path / "config.yaml") == cfg


def test_defaults_without_a_file():
    cfg = load_config(SSLConfig, None, ["optim.epochs=3"])
    assert cfg.model.name == "vit_small_patch16_224" and cfg.model.out_dim == 65536 and cfg.optim.epochs == 3


def _error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(SSLConfig, path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    assert _error(bad) == f"{bad}: optim.lrr: unknown key"


def test_unknown_key_or_section_in_override(tmp_path):
    assert _error(CONFIGS / "tiny_cpu.yaml", ["optim.lrr=1"]).endswith("optim.lrr: unknown key")
    assert _error(None, ["nosuch.key=1"]) == "<defaults>: nosuch: unknown key"
    assert "expected key=value" in _error(None, ["optim.base_lr"])


def test_bad_value_names_the_key(tmp_path):
    bad = tmp_path / "y.yaml"
    bad.write_text("data:\n  batch_size: many\n")
    message = _error(bad)
    assert message.startswith(f"{bad}: data.batch_size: ") and "'many'" in message
    assert _error(None, ["data.preset=cartoon"]).startswith("<defaults>: data.preset: ")


def test_missing_file_and_broken_yaml(tmp_path):
    assert _error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found"
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [1, 2\n")
    assert _error(broken).startswith(f"{broken}: line ")


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    result = CliRunner().invoke(app, ["pretrain", "ssl", "--config", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {bad}: optim.lrr: unknown key"
