"""Gen-DINO end to end: the DINO trainer with a `gensis:` section, on tiny stores and a generated.zarr of blends."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pathgen.runtime.checkpoint import load_checkpoint
from pathgen.ssl.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from gensis_helpers import make_generated, make_stores  # noqa: E402
from test_ssl_train import read_log, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(folder of 2 stores x 12 patches, generated.zarr: 2 views + 1 interpolation per patch, none for 2 patches)."""
    root = tmp_path_factory.mktemp("gensis")
    stores = make_stores(root / "stores")
    return root / "stores", make_generated(root / "generated.zarr", stores, skip_patches=2)


def gensis_config(tmp_path, data, *overrides):
    stores, generated = data
    return tiny_config(tmp_path, stores, f"gensis.generated={generated}", *overrides)


def _weights(out: Path) -> dict:
    return load_checkpoint(out / "checkpoints" / "last.pt")


def test_with_p_gen_and_lambda_0_it_is_plain_dino_step_for_step_and_weight_for_weight(tmp_path, data):
    stores, _ = data
    plain = train(tiny_config(tmp_path / "plain", stores))
    # no generated store is needed (nor opened, nor any random number drawn for it)
    off = train(tiny_config(tmp_path / "off", stores, "gensis.p_gen=0", "gensis.lambda_dis=0"))
    assert read_log(off) == read_log(plain)  # every logged value of every step, exactly
    a, b = _weights(plain), _weights(off)
    for part in ("student", "teacher", "dino_loss"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_logs_each_loss_term_and_what_was_used_writes_views_and_exports(tmp_path, data):
    cfg = gensis_config(tmp_path, data, "optim.epochs=1", "gensis.p_gen=0.5", "gensis.p_interp=1.0")
    out = train(cfg)
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        assert r["loss"] == pytest.approx(r["loss/dino"] + cfg.gensis.lambda_dis * r["loss/dis"], rel=1e-5)
        assert r["loss/dis"] > 0 and 0 <= r["gensis/generated_frac"] <= 1
    # p_interp 1: every patch that has an interpolation brings one; the 2 patches without fall back and are counted
    used = sum(r["gensis/interp_frac"] * 8 for r in log)
    assert used + sum(r["gensis/fallback_interp"] for r in log) == 24 and sum(r["gensis/fallback_interp"]
                                                                            for r in log) == 2
    # views.png: 4 rows of views (2 globals + 2 locals), then generated pairs (2 globals), then 4 interpolations
    generated_rows = min(4, round(log[0]["gensis/generated_frac"] * 8))
    views = Image.open(out / "views.png")
    assert views.size == (32 + 32 + 16 + 16 + 5 * 4, (4 + generated_rows + 4) * (32 + 4) + 4)
    pixels = np.asarray(views)
    last = 4 + (4 + generated_rows + 3) * 36  # top of the last interpolation row: x1 | x2 | x_int, all non-blank
    assert all(pixels[last:last + 32, x:x + 32].std() > 10 for x in (4, 40, 76))

    from pathgen.ssl.export import load_encoder

    model, transform = load_encoder(out)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    assert "gensis" in json.loads((out / "encoder.json").read_text())["config"]


@pytest.mark.parametrize("augment_on, workers", [("workers", 0), ("workers", 2), ("device", 2)])
def test_resume_is_exact_with_generated_views_and_interpolations(tmp_path, data, augment_on, workers):
    aug = [f"data.augment_on={augment_on}", f"data.num_workers={workers}", "gensis.p_gen=0.5", "gensis.p_interp=0.5"]
    full = train(gensis_config(tmp_path / "full", data, *aug))
    train(gensis_config(tmp_path / "cut", data, *aug, "run.max_steps=4"))
    resumed = train(gensis_config(tmp_path / "cut", data, *aug), resume="auto")
    full_log, resumed_log = read_log(full), read_log(resumed)
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4, 5, 6]
    assert any(r["gensis/interp_frac"] > 0 for r in full_log[4:])  # the resumed steps did use interpolations
    for a, b in zip(full_log[4:], resumed_log[4:], strict=True):
        assert a.keys() == b.keys()
        for key in a:  # losses to float tolerance; which views and interpolations were used, exactly
            assert b[key] == (a[key] if key.startswith("gensis/") else pytest.approx(a[key], abs=1e-6)), key
    a, b = _weights(full), _weights(resumed)
    for key in a["teacher"]:
        torch.testing.assert_close(a["teacher"][key], b["teacher"][key], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["dino_loss"]["center"], b["dino_loss"]["center"], rtol=0, atol=1e-7)


def _cli(*args: str):
    from pathgen.cli import app

    return CliRunner().invoke(app, list(args))


def test_pretrain_gensis_cli_and_which_command_takes_which_config(tmp_path, data):
    stores, generated = data
    tiny = [
        "data.global_size=32", "data.local_size=16", "data.n_local=2", "data.batch_size=8", "data.num_workers=0",
        "model.name=vit_tiny_patch16_224", "model.img_size=32",
        "model.kwargs={depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8}", "model.out_dim=128",
        "model.hidden_dim=64", "model.bottleneck_dim=32", "optim.epochs=1", "run.max_steps=1", "run.device=cpu",
        f"data.sources=[{stores}]",
    ]
    config = Path(__file__).parents[1] / "configs" / "gensis" / "tiny_cpu.yaml"
    result = _cli("pretrain", "gensis", "--config", str(config), "--out", str(tmp_path / "g"),
                  f"gensis.generated={generated}", *tiny)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "encoder.safetensors").is_file()
    # pretrain ssl refuses a Gen-DINO config (rather than silently using generated views), and the reverse
    refused = _cli("pretrain", "ssl", "--config", str(config), "--out", str(tmp_path / "s"), *tiny)
    assert refused.exit_code == 1 and "pathgen pretrain gensis" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
    plain = Path(__file__).parents[1] / "configs" / "ssl" / "tiny_cpu.yaml"
    refused = _cli("pretrain", "gensis", "--config", str(plain), "--out", str(tmp_path / "p"), *tiny)
    assert refused.exit_code == 1 and "no gensis: section" in refused.output
