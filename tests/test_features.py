"""`pathgen extract-features` and `slide-embed`: TRIDENT's h5 layout, exact features, several encoders per read,
--from-slides, resume after a kill, bad slides and encoders that fail alone, DDP sharding."""

import csv
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.data.augment import IMAGENET_MEAN, eval_transform
from pathgen.features.extract import extract_features
from pathgen.features.h5 import read_feature_file
from pathgen.slide.tiler import tile_cohort
from pathgen.ssl.export import create_backbone, export_encoder, load_encoder
from pathgen.store import open_store

TIMM = "timm:vit_tiny_patch16_224"  # 12 blocks at 32 px: 4 tokens, fast; random init, seeded


def export_tiny(out: Path, seed: int) -> Path:
    """A 2-block ViT exported like `pathgen pretrain ssl` does, with its own normalisation."""
    kwargs = {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    torch.manual_seed(seed)
    model = create_backbone("vit_tiny_patch16_224", 32, kwargs)
    export_encoder(model, out, "vit_tiny_patch16_224", kwargs, 32, (0.7, 0.6, 0.7), (0.15, 0.2, 0.15))
    return out


@pytest.fixture(scope="module")
def cohort(demo_cohort, tmp_path_factory):
    """The demo cohort tiled twice (32 px patches at 0.5 mpp): with images, and coords only; plus one encoder."""
    tmp = tmp_path_factory.mktemp("features")
    images = tile_cohort([demo_cohort], tmp / "images", mpp=0.5, patch_size=32, codec="lossless")  # exact pixels
    coords = tile_cohort([demo_cohort], tmp / "coords", mpp=0.5, patch_size=32, coords_only=True)
    return {"images": images, "coords": coords, "slides": demo_cohort.parent / "slides",
            "encoder": export_tiny(tmp / "dino", seed=0), "tmp": tmp}


def _run(cohort, out, encoders, **kw):
    kw.setdefault("workers", 0)
    return extract_features(encoders, [kw.pop("stores", cohort["images"])], out, img_size=kw.pop("img_size", 32),
                            batch_size=kw.pop("batch_size", 16), progress=False, **kw)


@pytest.fixture(scope="module")
def two(cohort):
    """One run with both encoders, --export-pt."""
    out = cohort["tmp"] / "two"
    return _run(cohort, out, [str(cohort["encoder"]), TIMM], export_pt=True)


def test_h5_layout_reads_like_trident_and_clam(cohort, two):
    assert not two.failed and {r.encoder for r in two.rows} == {"dino", "vit_tiny_patch16_224_random"}
    files = sorted((two.out_dir / "features_dino").glob("*.h5"))
    assert [f.stem for f in files] == ["slide_000", "slide_001", "slide_002", "slide_003"]
    sha = hashlib.sha256((cohort["encoder"] / "encoder.safetensors").read_bytes()).hexdigest()
    for path in files:
        store = open_store(path.parents[2] / "images" / f"{path.stem}.zarr")
        with h5py.File(path, "r") as f:  # as TRIDENT's slide encoders and CLAM's datasets read it
            features, coords, coords_attrs = f["features"][:], f["coords"][:], dict(f["coords"].attrs)
            assert features.dtype == np.float32 and features.shape == (len(store), 32)
            assert coords.dtype == np.int64 and coords.shape == (len(store), 2)
            np.testing.assert_array_equal(coords, store.coords)
            np.testing.assert_array_equal(f["tissue_fraction"][:], store.tissue_fraction)
            assert read_feature_file(path, features=False).coords_attrs == store.coords_attrs  # CLAM's, TRIDENT's
            for key in ("patch_size", "patch_level", "patch_size_level0", "level0_magnification",
                        "target_magnification", "slide_path"):
                assert key in coords_attrs
            root = dict(f.attrs)
            assert root["encoder"] == "dino" and root["encoder_sha256"] == sha and root["embed_dim"] == 32
            assert root["patch_mpp"] == 0.5 and root["patch_size"] == 32
            assert root["patch_size_level0"] == store.attrs["patch_size_level0"]
            assert root["source_store"] == str(store.path.resolve()) and "pathgen_version" in root
        bag = torch.load(path.parent / "pt_files" / f"{path.stem}.pt", weights_only=True)  # CLAM's pt_files
        assert isinstance(bag, torch.Tensor)
        np.testing.assert_array_equal(bag.numpy(), features)
    manifest = list(csv.DictReader(open(two.manifest)))
    assert len(manifest) == 8 and {r["status"] for r in manifest} == {"ok"}
    assert not list(two.out_dir.rglob("*.tmp-*"))


def test_features_equal_the_encoders_own_forward(cohort, two):
    model, transform = load_encoder(cohort["encoder"])
    assert transform.size == 32 and transform.mean == [0.7, 0.6, 0.7]  # its own preprocessing, not ImageNet's
    for slide in ("slide_000", "slide_003"):
        store = open_store(cohort["images"].parent / f"{slide}.zarr")
        with torch.inference_mode():
            expected = model(torch.stack([transform(store[i]) for i in range(len(store))])).numpy()
        with h5py.File(two.out_dir / "features_dino" / f"{slide}.h5") as f:
            np.testing.assert_allclose(f["features"][:], expected, rtol=1e-5, atol=1e-5)


def test_several_encoders_in_one_pass_equal_single_runs(cohort, two):
    for spec, name in ((str(cohort["encoder"]), "dino"), (TIMM, "vit_tiny_patch16_224_random")):
        single = _run(cohort, cohort["tmp"] / f"single_{name}", [spec], workers=1)
        for path in sorted((single.out_dir / f"features_{name}").glob("*.h5")):
            with h5py.File(path) as a, h5py.File(two.out_dir / f"features_{name}" / path.name) as b:
                np.testing.assert_allclose(a["features"][:], b["features"][:], rtol=1e-6, atol=1e-6)


def test_from_slides_equals_extraction_from_image_stores(cohort, two):
    out = cohort["tmp"] / "from_slides"
    result = _run(cohort, out, [str(cohort["encoder"])], stores=cohort["coords"], from_slides=cohort["slides"])
    assert not result.failed
    for path in sorted((out / "features_dino").glob("*.h5")):
        with h5py.File(path) as a, h5py.File(two.out_dir / "features_dino" / path.name) as b:
            np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
            np.testing.assert_allclose(a["features"][:], b["features"][:], rtol=1e-6, atol=1e-6)


def test_bad_store_slide_and_encoder_fail_alone(cohort, tmp_path):
    stores = tmp_path / "stores"
    stores.mkdir()
    for name in ("slide_000", "slide_001"):
        os.symlink(cohort["images"].parent / f"{name}.zarr", stores / f"{name}.zarr")
    os.symlink(cohort["coords"].parent / "slide_002.zarr", stores / "slide_002.zarr")  # no images
    unfinished = stores / "slide_003.zarr"
    import shutil

    import zarr

    shutil.copytree(cohort["images"].parent / "slide_003.zarr", unfinished)
    zarr.open_group(unfinished, mode="r+").attrs["complete"] = False  # a copy that never finished
    result = CliRunner().invoke(app, [
        "extract-features", "-e", TIMM, "-e", f"broken={tmp_path / 'nope'}", "-s", str(stores), "-o",
        str(tmp_path / "out"), "--img-size", "32", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 1
    rows = {(r["slide"], r["encoder"]): r for r in csv.DictReader(open(tmp_path / "out" / "extraction.csv"))}
    assert rows[("slide_000", "vit_tiny_patch16_224_random")]["status"] == "ok"
    assert rows[("slide_001", "vit_tiny_patch16_224_random")]["status"] == "ok"
    assert "no images" in rows[("slide_002", "vit_tiny_patch16_224_random")]["error"]
    assert "unfinished" in rows[("slide_003", "vit_tiny_patch16_224_random")]["error"]
    assert all(rows[(s, "broken")]["status"] == "failed" for s in ("slide_000", "slide_001"))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors and all(len(line) < 300 for line in errors)  # one line each, no traceback
    assert "Traceback" not in result.output
    written = sorted(p.name for p in (tmp_path / "out").rglob("*.h5"))
    assert written == ["slide_000.h5", "slide_001.h5"]  # nothing partial for the failed ones
    assert not list((tmp_path / "out").rglob("*.tmp-*"))

    bad_slides = tmp_path / "no_slides"
    bad_slides.mkdir()
    missing = _run(cohort, tmp_path / "out2", [TIMM], stores=cohort["coords"], from_slides=bad_slides)
    assert len(missing.failed) == 4 and "not found" in missing.failed[0].error


KILL_AFTER_ONE_SLIDE = """
import os, sys
import pathgen.features.h5 as h5
close = h5.FeatureFileWriter.close
def close_then_die(self):
    path = close(self)
    os.kill(os.getpid(), 9)  # killed right after the first slide is complete: later slides never finish
h5.FeatureFileWriter.close = close_then_die
from pathgen.features.extract import extract_features
from pathgen.features.h5 import read_feature_file
extract_features([sys.argv[1]], [sys.argv[2]], sys.argv[3], img_size=32, workers=0, batch_size=8, progress=False)
"""


@pytest.mark.slow  # a subprocess of its own: imports torch and timm again
def test_resume_after_a_kill_skips_finished_slides(cohort, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_ONE_SLIDE, TIMM, str(cohort["images"]), str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    folder = out / "features_vit_tiny_patch16_224_random"
    assert [p.name for p in folder.glob("*.h5")] == ["slide_000.h5"]
    first = (folder / "slide_000.h5").stat().st_mtime_ns
    result = _run(cohort, out, [TIMM])
    status = {r.slide: r.status for r in result.rows}
    assert status == {"slide_000": "skipped", "slide_001": "ok", "slide_002": "ok", "slide_003": "ok"}
    assert (folder / "slide_000.h5").stat().st_mtime_ns == first
    assert not list(out.rglob("*.tmp-*"))  # the killed run's temp file is cleaned up
    again = _run(cohort, out, [TIMM], fp16=True)  # new settings: recomputed, as float16
    assert {r.status for r in again.rows} == {"ok"}
    with h5py.File(folder / "slide_001.h5") as f:
        assert f["features"].dtype == np.float16


@pytest.mark.slow
def test_torchrun_shards_slides_across_two_gloo_ranks(cohort, two, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pathgen",
           "extract-features", "-e", str(cohort["encoder"]), "-s", str(cohort["images"]), "-o", str(out),
           "--workers", "0", "--device", "cpu", "--batch-size", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = [list(csv.DictReader(open(out / f"extraction.rank-{r}-of-2.csv"))) for r in (0, 1)]
    assert [[row["slide"] for row in s] for s in shards] == [["slide_000", "slide_002"], ["slide_001", "slide_003"]]
    for path in sorted((out / "features_dino").glob("*.h5")):
        with h5py.File(path) as a, h5py.File(two.out_dir / "features_dino" / path.name) as b:
            np.testing.assert_allclose(a["features"][:], b["features"][:], rtol=1e-6, atol=1e-6)


def test_slide_embed_mean_and_mil_attention(cohort, two, tmp_path):
    from pathgen.mil.config import MILModelConfig
    from pathgen.mil.models import build_model, save_model

    folder = two.out_dir / "features_dino"
    result = CliRunner().invoke(app, ["slide-embed", "-f", str(folder), "-o", str(tmp_path / "slides.h5"),
                                      "--table", str(tmp_path / "slides.csv")])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "slides.h5") as f:
        ids = [s.decode() for s in f["slide_ids"][:]]
        emb = f["embeddings"][:]
        assert f.attrs["pooling"] == "mean" and f.attrs["encoder"] == "dino"
    assert ids == ["slide_000", "slide_001", "slide_002", "slide_003"] and emb.shape == (4, 32)
    with h5py.File(folder / "slide_002.h5") as f:
        np.testing.assert_allclose(emb[2], f["features"][:].mean(0), rtol=1e-5, atol=1e-6)
    table = list(csv.reader(open(tmp_path / "slides.csv")))
    assert table[0][:2] == ["slide_id", "e0"] and len(table) == 5 and len(table[1]) == 33
    np.testing.assert_allclose(np.array(table[3][1:], float), emb[2], rtol=1e-6)
    import importlib.util

    parquet = CliRunner().invoke(app, ["slide-embed", "-f", str(folder), "-o", str(tmp_path / "p.h5"),
                                       "--table", str(tmp_path / "slides.parquet")])
    if importlib.util.find_spec("pyarrow") is None:  # an optional extra: a one-line error naming what to install
        assert parquet.exit_code == 1 and "pip install pyarrow" in parquet.output
    else:
        import pyarrow.parquet as pq

        assert parquet.exit_code == 0 and pq.read_table(tmp_path / "slides.parquet").num_rows == 4

    torch.manual_seed(0)
    model = build_model(MILModelConfig(hidden_dim=16, attn_dim=8), 32, 2).eval()
    save_model(model, tmp_path / "mil.safetensors", {"model": MILModelConfig(hidden_dim=16, attn_dim=8).model_dump(),
                                                     "in_dim": 32, "classes": ["a", "b"]})
    from pathgen.features.embed import slide_embed

    slide_embed(folder, tmp_path / "att.h5", mil_model=tmp_path / "mil.safetensors")
    with h5py.File(tmp_path / "att.h5") as f, h5py.File(folder / "slide_001.h5") as g:
        assert f.attrs["pooling"] == "attention:abmil" and f["embeddings"].shape == (4, 16)
        with torch.inference_mode():
            z, attention = model.embed(torch.from_numpy(g["features"][:]))
        np.testing.assert_allclose(f["embeddings"][1], z.numpy(), rtol=1e-5, atol=1e-6)
        assert abs(float(attention.sum()) - 1) < 1e-5


def test_mil_heatmap_png_on_the_slide_thumbnail(cohort, two, demo_cohort, tmp_path):
    from PIL import Image

    from pathgen.config import load_config
    from pathgen.mil.config import MILConfig
    from pathgen.mil.train import train_mil

    labels = tmp_path / "labels.csv"
    rows = list(csv.DictReader(open(demo_cohort)))
    labels.write_text("slide_id,label\n" + "".join(f"{Path(r['slide']).stem},{r['label']}\n" for r in rows))
    cfg = load_config(MILConfig, "configs/mil/tiny_cpu.yaml", ["train.epochs=2", "metrics.bootstrap=0"])
    features = two.out_dir / "features_dino"
    train_mil(features, labels, tmp_path / "mil", cfg, folds=2, progress=False)
    positive = next(Path(r["slide"]).stem for r in rows if r["label"] == "positive")
    png = tmp_path / "heat.png"
    result = CliRunner().invoke(app, ["mil", "heatmap", "-m", str(tmp_path / "mil"), "-f", str(features),
                                      "--slide", positive, "-o", str(png), "--slide-root", str(cohort["slides"])])
    assert result.exit_code == 0, result.output
    assert "predicted" in result.output
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[1] > 1.8 * img.shape[0]  # thumbnail and overlay side by side, plus the colour bar
    left, right = img[:, : img.shape[1] // 2], img[:, img.shape[1] // 2 :]
    assert np.abs(left.astype(int) - right[:, : left.shape[1]].astype(int)).mean() > 5  # the overlay is drawn
    missing = CliRunner().invoke(app, ["mil", "heatmap", "-m", str(tmp_path / "mil"), "-f", str(features),
                                       "--slide", "nope", "-o", str(tmp_path / "x.png")])
    assert missing.exit_code == 1 and "no feature file for slide 'nope'" in missing.output


def test_local_timm_folder_encoder_with_its_own_preprocessing(cohort, tmp_path):
    import timm
    from timm.models._hub import save_for_hf

    args = {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args).eval()
    folder = tmp_path / "hf_vit"
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)  # config.json + model.safetensors
    result = _run(cohort, tmp_path / "out", [f"hf={folder}"], img_size=None)
    assert not result.failed
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    cfg = timm.data.resolve_data_config({}, model=loaded)  # the folder's own preprocessing, as timm resolves it
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] != 1.0 and cfg["mean"] != IMAGENET_MEAN
    transform = eval_transform(32, cfg["mean"], cfg["std"], crop_pct=cfg["crop_pct"])
    store = open_store(cohort["images"].parent / "slide_001.zarr")
    with torch.inference_mode():
        expected = model(torch.stack([transform(store[i]) for i in range(len(store))])).numpy()
    with h5py.File(tmp_path / "out" / "features_hf" / "slide_001.h5") as f:
        np.testing.assert_allclose(f["features"][:], expected, rtol=1e-5, atol=1e-5)
