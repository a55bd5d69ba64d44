"""`pathgen eval knn|linear` end to end on a tiny ImageFolder, with timm random-init and exported encoders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.eval.encoders import resolve_encoder

TINY_VIT = "timm:vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two colour classes (reddish / bluish noise), 8 images each, 32 px."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for name, channel in (("lesion", 0), ("normal", 2)):
        (root / name).mkdir()
        for i in range(8):
            a = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            a[..., channel] += 160
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_knn_cli_with_random_init_timm_vit_and_split(folder, tmp_path):
    out = tmp_path / "knn.json"
    result = _run(
        "eval",
        "knn",
        "--encoder",
        TINY_VIT,
        "--img-size",
        "32",
        "--train",
        str(folder),
        "--batch-size",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["method"] == "knn" and payload["primary"] == "k=20"
    assert payload["n_train"] + payload["n_test"] == 16 and payload["n_test"] >= 2
    assert payload["classes"] == ["lesion", "normal"] and payload["feature_dim"] == 192
    assert set(payload["results"]) == {"k=10", "k=20", "k=100", "k=200"}
    assert payload["results"]["k=200"]["k_used"] == payload["n_train"]
    assert payload["top1"] == payload["results"]["k=20"]["top1"]
    # Even random ViT features keep colour: the two colour classes separate (chance is 0.5).
    assert payload["balanced_acc"] >= 0.9
    assert "top-1" in result.output and "k=20" in result.output


def test_linear_cli_with_exported_encoder_and_test_set(folder, tmp_path):
    from pathgen.ssl.export import create_backbone, export_encoder

    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    backbone = create_backbone("vit_tiny_patch16_224", 32, kwargs)
    export_encoder(backbone, tmp_path / "enc", "vit_tiny_patch16_224", kwargs, 32, (0.5,) * 3, (0.5,) * 3)
    out = tmp_path / "linear.json"
    result = _run(
        "eval",
        "linear",
        "-e",
        str(tmp_path / "enc"),
        "--train",
        str(folder),
        "--test",
        str(folder),
        "--img-size",
        "24",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["feature_dim"] == 32 and payload["n_train"] == payload["n_test"] == 16
    assert 0 <= payload["results"]["linear"]["top1"] <= 1 and payload["top1"] >= 0.9  # test == train here
    # --img-size changes the exported encoder's preprocessing size and keeps its normalisation.
    model, transform = resolve_encoder(str(tmp_path / "enc"), img_size=24)
    x = transform(Image.open(next(folder.glob("lesion/*.png"))))
    assert x.shape == (3, 24, 24)
    assert model(x[None]).shape == (1, 32)
    # random:<path> is the same architecture and preprocessing at (seeded) random init.
    rand, rand_transform = resolve_encoder(f"random:{tmp_path / 'enc'}", img_size=24)
    assert torch.equal(rand_transform(Image.open(next(folder.glob("lesion/*.png")))), x)
    with torch.no_grad():
        assert rand(x[None]).shape == (1, 32) and not torch.allclose(rand(x[None]), model(x[None]))
        assert torch.equal(rand(x[None]), resolve_encoder(f"random:{tmp_path / 'enc'}", img_size=24)[0](x[None]))
    result = _run("eval", "knn", "-e", f"random:{tmp_path / 'enc'}", "--train", str(folder), "--k", "3")
    assert result.exit_code == 0 and "k=3" in result.output, result.output


def test_timm_baseline_is_random_init_seeded_and_any_size():
    m1, t1 = resolve_encoder(TINY_VIT, img_size=32)
    m2, _ = resolve_encoder(TINY_VIT, img_size=32)
    m3, _ = resolve_encoder(TINY_VIT, img_size=32, seed=1)
    x = t1(Image.new("RGB", (40, 40), (200, 60, 90)))[None]
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x)) and not torch.equal(m1(x), m3(x))
    cnn, t = resolve_encoder("timm:resnet18", img_size=32)  # no img_size argument: only the transform changes
    assert t(Image.new("RGB", (40, 40))).shape == (3, 32, 32)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--encoder", "no/such/encoder"], "no/such/encoder"),
        (["--encoder", "random:no/such/encoder"], "no/such/encoder"),
        (["--encoder", "timm:not_a_model"], "not_a_model"),
        (["--encoder", TINY_VIT, "--train", "no/such/folder"], "no/such/folder"),
    ],
)
def test_bad_input_is_a_one_line_error(folder, args, message):
    if "--train" not in args:
        args = [*args, "--train", str(folder)]
    result = _run("eval", "knn", *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
