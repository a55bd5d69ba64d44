"""Exported teacher weights load in plain timm and through load_encoder, and give the teacher's features."""

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from pathgen.errors import PathgenError
from pathgen.runtime.checkpoint import load_checkpoint
from pathgen.ssl.export import create_backbone, export_from_checkpoint, load_encoder
from pathgen.ssl.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from test_ssl_train import make_toy_folder, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    toy = make_toy_folder(tmp / "toy", n_per_class=8)
    return train(tiny_config(tmp, toy, "optim.epochs=1"))


def _teacher_backbone(run: Path) -> torch.nn.Module:
    """The trained teacher's backbone, rebuilt independently from the checkpoint."""
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    meta = json.loads((run / "encoder.json").read_text())
    model = create_backbone(meta["model_name"], meta["img_size"], meta["model_kwargs"])
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in state["teacher"].items()
                           if k.startswith("backbone.")})
    return model.eval()


def test_timm_loads_exported_weights_via_pretrained_cfg_overlay(run):
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["model_name"] == "vit_tiny_patch16_224" and meta["embed_dim"] == 32 and meta["img_size"] == 32
    model = timm.create_model(
        meta["model_name"], pretrained=True, num_classes=0, img_size=meta["img_size"], **meta["model_kwargs"],
        pretrained_cfg_overlay=dict(file=str(run / "encoder.safetensors")),
    ).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _teacher_backbone(run)(x))
        assert not torch.allclose(model(x), create_backbone(meta["model_name"], 32, meta["model_kwargs"]).eval()(x))


def test_load_encoder_returns_model_and_preprocessing(run):
    for path in (run, run / "encoder.safetensors"):
        model, preprocess = load_encoder(path)
        assert not model.training
        img = Image.new("RGB", (48, 40), (200, 30, 90))
        x = preprocess(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        with torch.no_grad():
            feats = model(x[None])
            torch.testing.assert_close(feats, _teacher_backbone(run)(x[None]))
        assert feats.shape == (1, 32)


def test_export_from_checkpoint_reproduces_the_export(run, tmp_path):
    weights = export_from_checkpoint(run / "checkpoints" / "last.pt", tmp_path)
    model, _ = load_encoder(weights)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_encoder(run)[0](x))


def test_load_encoder_errors_are_one_line(tmp_path):
    with pytest.raises(PathgenError, match="encoder weights not found"):
        load_encoder(tmp_path)
    (tmp_path / "encoder.safetensors").write_bytes(b"not weights")
    with pytest.raises(PathgenError, match="encoder metadata not found"):
        load_encoder(tmp_path / "encoder.safetensors")


def test_cli_export_only(run, tmp_path):
    from typer.testing import CliRunner

    from pathgen.cli import app

    result = CliRunner().invoke(
        app, ["pretrain", "ssl", "--export-only", str(run / "checkpoints" / "last.pt"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "encoder.safetensors").is_file() and (tmp_path / "encoder.json").is_file()
    missing = CliRunner().invoke(app, ["pretrain", "ssl", "--export-only", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 1 and missing.output.strip() == f"error: {tmp_path / 'nope.pt'}: checkpoint not found"


def test_encoder_sha256_identifies_the_weights_file(run, tmp_path):
    import hashlib

    from pathgen.ssl.export import encoder_sha256

    digest = encoder_sha256(run)
    assert digest == hashlib.sha256((run / "encoder.safetensors").read_bytes()).hexdigest()
    assert encoder_sha256(run / "encoder.safetensors") == digest
    with pytest.raises(PathgenError, match="encoder weights not found"):
        encoder_sha256(tmp_path)
