"""`pathgen generate`: the generated.zarr schema and its provenance, reruns, resume after a failure, bad input."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from pathgen.errors import ConfigError, EncoderError, StoreError

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_toy import make_encoder, make_texture_stores, tiny_config  # noqa: E402

FAST = dict(views=2, interpolations=1, steps=2, batch_size=4, chunk_items=16, fidelity_samples=16, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(stores, encoder, model folder) of a 2-step toy run: enough to check the plumbing, not the quality."""
    from pathgen.diffusion.train import train_diffusion

    root = tmp_path_factory.mktemp("generate")
    stores, encoder = make_texture_stores(root / "stores", n_per_class=4), make_encoder(root / "encoder")
    out = train_diffusion(tiny_config(root / "run", stores, encoder, "run.max_steps=2"))
    return stores, encoder, out / "model"


def generated(out: Path):
    return zarr.open_group(out / "generated.zarr", mode="r")


def test_writes_the_schema_with_provenance_grid_and_fidelity(trained, tmp_path):
    from pathgen import __version__
    from pathgen.diffusion.generate import generate
    from pathgen.ssl.export import encoder_sha256
    from pathgen.store import open_store

    stores, encoder, model = trained
    out = generate(model, stores, tmp_path / "gen", seed=3, **FAST)
    g = generated(out)
    n = 16 * 3  # 16 patches x (2 views + 1 interpolation)
    expected = {"images": ("uint8", (n, 16, 16, 3)), "kind": ("uint8", (n,)), "source": ("int64", (n, 2)),
                "partner": ("int64", (n, 2)), "alpha": ("float32", (n,)), "seed": ("int64", (n,))}
    for name, (dtype, shape) in expected.items():
        assert (str(g[name].dtype), g[name].shape) == (dtype, shape), name
    kind, source, partner, alpha = g["kind"][:], g["source"][:], g["partner"][:], g["alpha"][:]
    assert kind.tolist() == [0, 0, 1] * 16
    assert [tuple(s) for s in source[::3]] == [(k, i) for k in range(4) for i in range(4)]  # every patch a source
    views = kind == 0
    assert (partner[views] == -1).all() and (alpha[views] == 1.0).all()
    assert ((alpha[~views] >= 0.3) & (alpha[~views] <= 0.7)).all()
    assert (partner[~views] >= 0).all() and (partner[~views] != source[~views]).any(axis=1).all()  # another patch
    assert len(np.unique(g["seed"][:])) == n
    images = g["images"][:]
    assert images.std() > 0 and not (images == 0).all(axis=(1, 2, 3)).any()  # every image was written

    attrs = dict(g.attrs)
    assert attrs["stores"] == [str(p) for p in stores]
    assert attrs["store_ids"] == [open_store(p).content_id for p in stores]
    assert attrs["encoder_sha256"] == encoder_sha256(encoder) and attrs["model"] == str(model.resolve())
    assert (attrs["sampler"], attrs["steps"], attrs["guidance_scale"], attrs["image_size"]) == ("dpm++", 2, 2.5, 16)
    assert attrs["pathgen_version"] == __version__ and attrs["schema_version"] == 1 and attrs["complete"] is True

    grid = Image.open(out / "grid.png")  # 6 rows of a source + 2 views, then a strip of 2 ends + 5 alphas
    assert grid.size == (7 * (16 + 4) + 4, 7 * (16 + 4 + 12) + 4)  # 12 px of caption band per row
    report = json.loads((out / "fidelity.json").read_text())
    assert report["views"]["n_candidates"] == 16 and report["views"]["chance"] == pytest.approx(1 / 16, abs=1e-4)
    assert 0.0 <= report["views"]["retrieval_top1"] <= 1.0
    assert len(report["interpolations"]["by_alpha"]) == 4


def test_a_rerun_makes_the_same_images_in_any_batch_size(trained, tmp_path):
    from pathgen.diffusion.generate import generate

    stores, _, model = trained
    a = generated(generate(model, stores, tmp_path / "a", **FAST))["images"][:]
    b = generated(generate(model, stores, tmp_path / "b", **FAST))["images"][:]
    np.testing.assert_array_equal(a, b)
    c = generated(generate(model, stores, tmp_path / "c", **{**FAST, "batch_size": 3}))["images"][:]
    # each image's noise is its own; only float rounding of the batched UNet may differ, by a level at most
    assert np.abs(a.astype(int) - c.astype(int)).max() <= 1


def test_a_run_killed_between_chunks_resumes_with_nothing_lost_or_made_twice(trained, tmp_path, monkeypatch):
    from pathgen.diffusion import generate as gen_mod
    from pathgen.store.generated import GeneratedStoreError, open_generated

    stores, _, model = trained
    full = generated(gen_mod.generate(model, stores, tmp_path / "full", **FAST))["images"][:]
    with pytest.raises(RuntimeError, match="injected failure after 2 chunks"):
        gen_mod.generate(model, stores, tmp_path / "cut", fail_after_chunks=2, **FAST)
    with pytest.raises(GeneratedStoreError, match="unfinished"):
        open_generated(tmp_path / "cut" / "generated.zarr")
    made = []
    real_call = gen_mod.ImageMaker.__call__
    monkeypatch.setattr(gen_mod.ImageMaker, "__call__", lambda self, items: made.append(len(items)) or
                        real_call(self, items))
    out = gen_mod.generate(model, stores, tmp_path / "cut", **FAST)
    assert sum(made) == 48 - 2 * 16 + 5  # the last of 3 chunks, then the grid's 5-image strip
    np.testing.assert_array_equal(generated(out)["images"][:], full)
    assert generated(out)["done"][:].tolist() == [1, 1, 1]
    # other settings into the same folder: refused, not mixed
    with pytest.raises(GeneratedStoreError, match="other settings"):
        gen_mod.generate(model, stores, tmp_path / "cut", **{**FAST, "guidance_scale": 1.0})


def test_dry_run_counts_and_times_one_batch_and_writes_nothing(trained, tmp_path, capsys):
    from pathgen.diffusion.generate import generate

    stores, _, model = trained
    generate(model, stores, tmp_path / "dry", dry_run=True, max_sources=5, **FAST)
    printed = capsys.readouterr().out
    assert "15 images (5 source patches x (2 views + 1 interpolations))" in printed and "img/s" in printed
    assert not (tmp_path / "dry").exists()


def test_bad_input_gets_a_one_line_error_and_nothing_is_written(trained, tmp_path):
    from pathgen.cli import app
    from pathgen.diffusion.generate import generate
    from pathgen.store import PatchStoreWriter

    stores, encoder, model = trained
    out = tmp_path / "out"
    with pytest.raises(EncoderError, match="differs from that of the encoder the model was trained on"):
        generate(model, stores, out, encoder=make_encoder(tmp_path / "other", seed=1), **FAST)
    with pytest.raises(StoreError, match="no such store"):
        generate(model, [tmp_path / "missing.zarr"], out, **FAST)
    unfinished = tmp_path / "unfinished.zarr"
    shutil.copytree(stores[0], unfinished)
    zarr.open_group(unfinished, mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="unfinished store"):
        generate(model, [stores[1], unfinished], out, **FAST)
    big = tmp_path / "big.zarr"
    with PatchStoreWriter(big, np.zeros((2, 2)), np.ones(2), patch_size=24, attrs={}) as w:
        w.write(0, np.full((2, 24, 24, 3), 128, np.uint8))
    with pytest.raises(StoreError, match="patch size 24 differs from the model's image size 16"):
        generate(model, [big], out, **FAST)
    with pytest.raises(ConfigError, match="unknown sampler 'euler'"):
        generate(model, stores, out, **{**FAST, "sampler": "euler"})
    with pytest.raises(ConfigError, match="must be >= 0"):
        generate(model, stores, out, **{**FAST, "guidance_scale": -1.0})
    assert not out.exists()
    # --resize accepts the other patch size
    resized = generate(model, [big], tmp_path / "resized", **{**FAST, "interpolations": 1, "views": 1}, resize=True)
    assert generated(resized)["images"].shape == (4, 16, 16, 3)
    # the command line prints one line and exits 1
    result = CliRunner().invoke(app, ["generate", "--model", str(model), "--stores", str(big), "--out", str(out)])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert result.output.startswith(f"error: {big}: patch size 24")
    result = CliRunner().invoke(app, ["generate", "--model", str(tmp_path), "--stores", str(big), "--out", str(out)])
    assert result.exit_code == 1 and "not a diffusion model folder" in result.output
