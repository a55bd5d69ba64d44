"""The provided pipelines (pipelines/histo_gensis.yaml, imagenet_gensis.yaml): valid as shipped, and run end to end
on the CPU in seconds with tiny models; the SLURM array tiling script run for real on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pathgen.errors import ConfigError
from pathgen.pipeline.runner import Pipeline

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
HISTO, IMAGENET = PIPELINES / "histo_gensis.yaml", PIPELINES / "imagenet_gensis.yaml"

# tiny models at 32 px: every training step a few seconds on a CPU
TINY_VIT = [
    "data.global_size=32", "data.local_size=16", "data.n_local=2", "data.num_workers=0", "data.batch_size=8",
    "model.name=vit_tiny_patch16_224", "model.img_size=32",
    "model.kwargs={depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8}", "model.out_dim=128", "model.hidden_dim=64",
    "model.bottleneck_dim=32", "model.drop_path_rate=0.0", "optim.epochs=1", "optim.warmup_epochs=0",
    "run.max_steps=2", "run.device=cpu", "run.precision=fp32",
]
TINY_UNET = [
    "data.image_size=32", "data.held_out=2", "data.batch_size=8", "data.num_workers=0", "data.encode_batch_size=16",
    "model.space=pixel", "model.vae=null", "model.patch_size=4", "model.block_out_channels=[32]",
    "model.down_block_types=[CrossAttnDownBlock2D]", "model.up_block_types=[CrossAttnUpBlock2D]",
    "model.layers_per_block=1", "model.attention_head_dim=8", "model.norm_num_groups=8", "model.projection_dim=32",
    "noise.num_train_timesteps=100", "optim.epochs=1", "optim.warmup_steps=0", "sample.every_steps=0",
    "sample.per_embedding=2", "sample.steps=2", "run.max_steps=2", "run.device=cpu", "run.precision=fp32",
]
GENERATE = ["generate.steps=2", "generate.batch_size=8"]


def tiny(step: str, overrides: list[str]) -> list[str]:
    return [f"{step}:{o}" for o in overrides]


def trainers(gensis: str = "gensis") -> list[str]:
    return [*tiny("ssl", TINY_VIT), *tiny("diffusion", TINY_UNET), *GENERATE, *tiny(gensis, TINY_VIT),
            "ssl.gpus=1", "diffusion.gpus=1", f"{gensis}.gpus=1"]


def plan(path: Path, out: Path, overrides: list[str]) -> dict[str, str]:
    return {s.name: s.action for s in Pipeline(path, out, tuple(overrides)).plan()}


def test_the_shipped_pipelines_plan_with_their_one_required_input_each(tmp_path):
    with pytest.raises(ConfigError, match=r"steps.tile.with.slides: required key is missing"):
        Pipeline(HISTO, tmp_path).plan()
    with pytest.raises(ConfigError, match=r"steps.pack.with.images: required key is missing"):
        Pipeline(IMAGENET, tmp_path).plan()
    histo = plan(HISTO, tmp_path / "h", ["tile.slides=[cohort.csv]"])
    assert list(histo) == ["tile", "ssl", "diffusion", "generate", "gensis", "features", "mil_dino", "mil_gensis",
                           "compare"] and set(histo.values()) == {"run"}
    imagenet = plan(IMAGENET, tmp_path / "i", ["pack.images=train", "pack_val.images=val"])
    assert list(imagenet) == ["pack", "pack_val", "ssl", "diffusion", "generate", "gensis", "compare"]
    # the shipped configs resolve, with every reference in place
    pipe = Pipeline(IMAGENET, tmp_path / "i", ("pack.images=train", "pack_val.images=val"))
    steps = {s.name: s for s in pipe.plan()}
    assert steps["ssl"].config.model.name == "vit_small_patch16_224" and pipe.spec.steps["ssl"].gpus == 8
    assert steps["diffusion"].config.data.encoder == str(tmp_path / "i" / "ssl" / "encoder.safetensors")
    assert steps["gensis"].config.gensis.generated == str(tmp_path / "i" / "generate" / "generated.zarr")
    assert steps["compare"].params.test == [str(tmp_path / "i" / "pack_val" / "manifest.csv")]
    # and as a user runs it
    from typer.testing import CliRunner

    from pathgen.cli import app

    result = CliRunner().invoke(app, ["run", str(HISTO), "tile.slides=[cohort.csv]", "--plan", "--out",
                                      str(tmp_path / "h")], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "mil-compare" in result.output and result.output.count("never run") == 9
    result = CliRunner().invoke(app, ["run", str(IMAGENET), "--plan", "--out", str(tmp_path / "i")])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {IMAGENET}: steps.pack.with.images: required key is missing"


@pytest.mark.slow
def test_the_imagenet_pipeline_runs_on_a_tiny_image_folder(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_pack import make_image_folder

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    train = make_image_folder(tmp_path / "data" / "train", n_per_class=8)
    val = make_image_folder(tmp_path / "data" / "val", n_per_class=4, seed=1)
    overrides = [f"pack.images={train}", f"pack_val.images={val}", "pack.size=32", "pack_val.size=32",
                 "pack.workers=0", "pack_val.workers=0", *trainers(), "compare.k=5", "compare.batch_size=16",
                 "compare.workers=0"]
    out = tmp_path / "run"
    record = Pipeline(IMAGENET, out, tuple(overrides)).run()
    assert {s["status"] for s in record["steps"].values()} == {"done"}
    table = json.loads((out / "compare" / "compare.json").read_text())
    assert [r["encoder"] for r in table["rows"]] == [f"random:{out}/ssl/encoder.safetensors",
                                                     f"{out}/ssl/encoder.safetensors",
                                                     f"{out}/gensis/encoder.safetensors"]
    assert [r["n_train"] for r in table["rows"]] == [16] * 3 and [r["n_test"] for r in table["rows"]] == [8] * 3
    assert table["classes"] == ["astronaut", "coffee"]
    assert json.loads((out / "generate" / "fidelity.json").read_text())  # views of the packed images, checked
    # Gen-DINO found the generated views of the packed stores (joined by store content id)
    assert "16 of 16 patches have generated views" in (out / "logs" / "gensis.log").read_text()
    assert {s.action for s in Pipeline(IMAGENET, out, tuple(overrides)).plan()} == {"skip"}


TINY_MIL = ["model.hidden_dim=16", "model.attn_dim=8", "train.epochs=2", "train.val_fraction=0.0", "train.min_epochs=1",
            "train.num_workers=0", "cv.folds=2", "metrics.bootstrap=10", "run.device=cpu"]


@pytest.fixture
def cohort_csv(demo_slides, tmp_path) -> Path:
    """The brief's slide list: slide, label, case_id (no slide_id: the MIL steps name slides by their stores)."""
    path = tmp_path / "cohort.csv"
    rows = [f"{p},{'positive' if i % 2 == 0 else 'negative'},case{i}" for i, p in enumerate(demo_slides)]
    path.write_text("slide,label,case_id\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_the_histo_pipeline_runs_on_the_tiny_demo_slides(cohort_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = [f"tile.slides=[{cohort_csv}]", "tile.patch_size=32", "tile.workers=0", *trainers(),
                 "generate.max_sources=16", "features.batch_size=64", "features.workers=0",
                 *tiny("mil_dino", TINY_MIL), *tiny("mil_gensis", TINY_MIL)]
    out = tmp_path / "run"
    record = Pipeline(HISTO, out, tuple(overrides)).run()
    assert {s["status"] for s in record["steps"].values()} == {"done"}
    assert record["steps"]["features"]["consumed"].keys() == {"ssl.encoder", "gensis.encoder", "tile.manifest"}
    slides = sorted(p.stem for p in (out / "features" / "features_dino").glob("*.h5"))
    assert slides == sorted(p.stem for p in (out / "features" / "features_gensis").glob("*.h5"))
    assert len(slides) == 4
    # the MIL steps read their labels from the tiling manifest: every slide found, none skipped
    assert (out / "mil_dino" / "skipped.csv").read_text().strip() == "slide_id,reason"
    table = json.loads((out / "compare" / "compare.json").read_text())
    assert [r["encoder"] for r in table["rows"]] == ["dino", "gensis"] and table["same_splits"]
    assert [r["n_test"] for r in table["rows"]] == [4, 4]  # every slide tested once over the 2 folds
    assert (out / "compare" / "compare.csv").read_text().startswith("encoder,accuracy_mean,accuracy_std,")


SLURM = PIPELINES / "slurm"


def test_the_array_tiling_script_tiles_each_shard_then_merges_every_slide_once(demo_cohort, tmp_path):
    from pathgen.store.manifest import read_manifest

    out = tmp_path / "tiles"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PATHGEN_TILE_ARGS": "--patch-size 32 --workers 0"}
    script = ["bash", str(SLURM / "tile_array.sh")]
    for task in ("0", "1"):  # what `sbatch --array=0-1 tile_array.sh tile labels.csv OUT 2` runs, task by task
        result = subprocess.run([*script, "tile", str(demo_cohort), str(out), "2"], capture_output=True, text=True,
                                env={**env, "SLURM_ARRAY_TASK_ID": task}, timeout=300)
        assert result.returncode == 0, result.stderr
        assert read_manifest(out / f"manifest.shard-{task}-of-2.csv")  # the hash gives each task some slides
    result = subprocess.run([*script, "merge", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "slides: 4  ok: 4" in result.stdout
    rows = read_manifest(out / "manifest.csv")
    with demo_cohort.open() as f:
        listed = sorted(str(demo_cohort.parent / line.split(",")[0]) for line in f.read().splitlines()[1:])
    assert sorted(r.slide for r in rows) == listed  # every slide once
    assert {r.extra["label"] for r in rows} == {"positive", "negative"}  # the slide list's columns carried
    assert all((out / r.store).is_dir() for r in rows)
    # outside an array job, tile mode says what it needs
    result = subprocess.run([*script, "tile", str(demo_cohort), str(out), "2"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode != 0 and "SLURM array task" in result.stderr
