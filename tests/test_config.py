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
    assert cfg.dino.student_temp == 0.1
    if name == "tiny_cpu.yaml":  # the demo's: crops that keep the nuclear scale, a sharp teacher, a fast centre
        assert cfg.data.global_scale == (0.8, 1.0) and cfg.data.local_scale == (0.2, 0.3)
        assert cfg.dino.teacher_temp == 0.01 and cfg.dino.center_momentum == 0.5
    else:
        assert cfg.data.global_scale == (0.4, 1.0) and cfg.data.local_scale == (0.05, 0.4)
        assert cfg.dino.center_momentum == 0.9


def test_recipes_say_what_they_promise():
    histo = load_config(SSLConfig, CONFIGS / "histo_vits16.yaml")
    assert (histo.model.name, histo.data.preset, histo.optim.epochs) == ("vit_small_patch16_224", "histo", 100)
    assert (histo.data.global_size, histo.data.local_size) == (224, 96)


# facebookresearch/dino main_dino.py, get_args_parser(): the defaults, which are its vanilla ViT-S/16 100-epoch run
# ("Vanilla DINO training" in its README: 8 GPUs x 64, 69.3% k-NN / 74.0% linear), the paper's DINO baseline
MAIN_DINO_DEFAULTS = {
    "arch": "vit_small", "patch_size": 16, "out_dim": 65536, "norm_last_layer": True, "momentum_teacher": 0.996,
    "use_bn_in_head": False, "warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
    "use_fp16": True, "weight_decay": 0.04, "weight_decay_end": 0.4, "clip_grad": 3.0, "batch_size_per_gpu": 64,
    "epochs": 100, "freeze_last_layer": 1, "lr": 0.0005, "warmup_epochs": 10, "min_lr": 1e-6, "optimizer": "adamw",
    "drop_path_rate": 0.1, "global_crops_scale": (0.4, 1.0), "local_crops_number": 8, "local_crops_scale": (0.05, 0.4),
    "seed": 0, "num_workers": 10,
}
# and the constants of its code: DataAugmentationDINO's crop sizes, DINOLoss's, DINOHead's (nlayers 3)
MAIN_DINO_CONSTANTS = {"global_size": 224, "local_size": 96, "student_temp": 0.1, "center_momentum": 0.9,
                       "hidden_dim": 2048, "bottleneck_dim": 256}


def _as_main_dino(cfg: SSLConfig) -> dict:
    """A pathgen config in main_dino.py's terms (arch + patch size from the timm name; AdamW, no BN in the head)."""
    arch, patch = {"vit_small_patch16_224": ("vit_small", 16)}[cfg.model.name]
    d, m, o, k = cfg.data, cfg.model, cfg.optim, cfg.dino
    return {
        "arch": arch, "patch_size": patch, "out_dim": m.out_dim, "norm_last_layer": m.norm_last_layer,
        "momentum_teacher": k.momentum_teacher, "use_bn_in_head": False, "warmup_teacher_temp": k.warmup_teacher_temp,
        "teacher_temp": k.teacher_temp, "warmup_teacher_temp_epochs": k.warmup_teacher_temp_epochs,
        "use_fp16": cfg.run.precision == "fp16", "weight_decay": o.weight_decay, "weight_decay_end": o.weight_decay_end,
        "clip_grad": o.clip_grad, "batch_size_per_gpu": d.batch_size, "epochs": o.epochs,
        "freeze_last_layer": o.freeze_last_layer, "lr": o.base_lr, "warmup_epochs": o.warmup_epochs,
        "min_lr": o.min_lr, "optimizer": "adamw", "drop_path_rate": m.drop_path_rate,
        "global_crops_scale": tuple(d.global_scale), "local_crops_number": d.n_local,
        "local_crops_scale": tuple(d.local_scale), "seed": cfg.run.seed, "num_workers": d.num_workers,
    }, {"global_size": d.global_size, "local_size": d.local_size, "student_temp": k.student_temp,
        "center_momentum": k.center_momentum, "hidden_dim": m.hidden_dim, "bottleneck_dim": m.bottleneck_dim}


@pytest.mark.parametrize("path", ["ssl/imagenet_vits16.yaml", "gensis/imagenet_vits16.yaml"])
def test_imagenet_recipe_is_exactly_main_dino_defaults(path):
    cfg = load_config(SSLConfig, CONFIGS.parent / path)
    args, constants = _as_main_dino(cfg)
    assert args == MAIN_DINO_DEFAULTS and constants == MAIN_DINO_CONSTANTS
    assert cfg.model.kwargs == {} and cfg.data.preset == "natural" and cfg.model.img_size == 224


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "histo_vits16.yaml", "imagenet_vits16.yaml"])
def test_gensis_recipes_are_their_dino_recipes_plus_the_gensis_section(name):
    dino = load_config(SSLConfig, CONFIGS / name).model_dump()
    gensis = load_config(SSLConfig, CONFIGS.parent / "gensis" / name).model_dump()
    assert gensis.pop("gensis") == {"generated": None, "p_gen": 0.5, "lambda_dis": 1.0, "p_interp": 0.5,
                                    "encoder": None}
    assert dino.pop("gensis") is None
    assert dino["run"].pop("out_dir") != gensis["run"].pop("out_dir")
    assert gensis == dino  # the same model, data and schedule: the encoders differ only by Gen-SIS


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
