"""`pathgen pretrain diffusion` on toy texture stores: the loss falls, resume is exact, the cache is used, and the
saved model folder reloads with from_pretrained to the same samples."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pathgen.errors import ConfigError, EncoderError
from pathgen.runtime.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_toy import make_encoder, make_texture_stores, tiny_config  # noqa: E402


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def fixed_loss(cfg, state: dict | None) -> float:
    """The v-prediction loss of the run's initial model (state None) or of `state`, on every toy patch at fixed
    noise and timesteps."""
    from pathgen.diffusion import space
    from pathgen.diffusion.model import Denoiser, build_noise_scheduler, build_projection, build_unet
    from pathgen.diffusion.sources import SourcePatches
    from pathgen.runtime.seeding import seed_everything

    seed_everything(cfg.run.seed)  # what the trainer does before building its models
    model = Denoiser(build_unet(cfg.model, 48, 4), build_projection(cfg.model, 32))
    if state is not None:
        model.load_state_dict(state)
    from pathgen.diffusion.encoder import FrozenEncoder

    patches = SourcePatches(cfg.data.sources, 16)
    images = patches.read(patches.pairs(np.arange(len(patches))))
    e = FrozenEncoder(cfg.data.encoder)(images)
    x0 = space.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, None, 4)
    g = torch.Generator().manual_seed(123)
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 100, (len(x0),), generator=g)
    scheduler = build_noise_scheduler(cfg.noise, clip_sample=True)
    with torch.no_grad():
        pred = model(scheduler.add_noise(x0, noise, t), t, e)
    return float(((pred - scheduler.get_velocity(x0, noise, t)) ** 2).mean())


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("diffusion_toy")
    return make_texture_stores(root / "stores"), make_encoder(root / "encoder")


def test_loss_falls_and_the_run_writes_its_artefacts(tmp_path, toy):
    from pathgen.diffusion.train import train_diffusion

    stores, encoder = toy
    cfg = tiny_config(tmp_path / "run", stores, encoder, "optim.epochs=8", "sample.every_steps=12")
    out = train_diffusion(cfg)
    assert len(read_log(out)) == 8 * 3  # 30 patches (2 held out) / batch 8 = 3 steps per epoch
    # per-batch losses are noisy (random timesteps): compare the loss on one fixed batch of noise and timesteps
    before, after = fixed_loss(cfg, None), fixed_loss(cfg, load_checkpoint(out / "checkpoints" / "last.pt")["model"])
    assert after < 0.8 * before, (before, after)  # measured 0.87 -> 0.64
    assert {"loss", "lr", "grad_norm", "ema_decay"} <= set(read_log(out)[0])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_0000012.png", "step_0000024.png"]
    model = out / "model"
    assert {"model_index.json", "unet", "scheduler", "projection", "pathgen.json"} <= {p.name for p in model.iterdir()}
    meta = json.loads((model / "pathgen.json").read_text())
    from pathgen.ssl.export import encoder_sha256

    assert meta["encoder_sha256"] == encoder_sha256(encoder) and meta["embed_dim"] == 32
    assert (meta["image_size"], meta["mpp"], meta["space"]) == (16, 0.5, "pixel")


def test_resume_continues_exactly(tmp_path, toy):
    # 3 steps per epoch, 2 epochs: stop after 4 steps (mid-epoch 1), resume, compare steps 5-6 with a full run
    from pathgen.diffusion.train import train_diffusion

    stores, encoder = toy
    full = train_diffusion(tiny_config(tmp_path / "full", stores, encoder))
    cut = tiny_config(tmp_path / "cut", stores, encoder, "run.max_steps=4")
    train_diffusion(cut)
    assert load_checkpoint(Path(cut.run.out_dir) / "checkpoints" / "last.pt")["step"] == 4
    resumed = train_diffusion(tiny_config(tmp_path / "cut", stores, encoder), resume="auto")

    full_log = {r["step"]: r["loss"] for r in read_log(full)}
    resumed_log = {r["step"]: r["loss"] for r in read_log(resumed)}
    assert sorted(resumed_log) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert resumed_log[step] == pytest.approx(full_log[step], abs=1e-6)
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(resumed / "checkpoints" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6, msg=key)
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    assert a["ema"]["optimization_step"] == b["ema"]["optimization_step"] == 6


def test_embeddings_are_cached_by_encoder_sha_and_training_never_reruns_the_encoder(tmp_path, toy, monkeypatch):
    from pathgen.diffusion import cache as cache_mod
    from pathgen.diffusion.train import train_diffusion

    stores, encoder = toy
    shared = tmp_path / "cache"
    train_diffusion(tiny_config(tmp_path / "a", stores, encoder, "run.max_steps=1", f"data.cache_dir={shared}"))
    built = list(shared.iterdir())
    assert len(built) == 1 and (built[0] / "embeddings.npy").is_file()
    assert np.load(built[0] / "embeddings.npy").shape == (32, 32)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(cache_mod.FrozenEncoder, "__call__", no_encoding)  # nothing may run the encoder now
    train_diffusion(tiny_config(tmp_path / "b", stores, encoder, "run.max_steps=2", f"data.cache_dir={shared}"))
    monkeypatch.undo()
    other = make_encoder(tmp_path / "other_encoder", seed=1)  # another encoder: its own cache
    train_diffusion(tiny_config(tmp_path / "c", stores, other, "run.max_steps=1", f"data.cache_dir={shared}"))
    assert len(list(shared.iterdir())) == 2


def test_reload_gives_identical_samples_for_a_fixed_seed(tmp_path, toy):
    from pathgen.diffusion.pipeline import EmbeddingConditionedPipeline, load_pipeline
    from pathgen.diffusion.train import train_diffusion

    stores, encoder = toy
    out = train_diffusion(tiny_config(tmp_path / "run", stores, encoder, "run.max_steps=2",
                                      "model.conditioning=timestep", "model.null_condition=zeros",
                                      "model.down_block_types=[AttnDownBlock2D]",
                                      "model.up_block_types=[AttnUpBlock2D]", "model.mid_block_type=UNetMidBlock2D",
                                      "noise.prediction_type=epsilon"))
    e = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    a = EmbeddingConditionedPipeline.from_pretrained(out / "model")
    b = load_pipeline(out / "model")
    assert a.metadata["space"] == "pixel" and a.image_size == 16 and a.unet.config.class_embed_type == "projection"
    first = a(embeddings=e, num_inference_steps=3, guidance_scale=2.5, generator=torch.Generator().manual_seed(7),
              output_type="np").images
    again = b(embeddings=e, num_inference_steps=3, guidance_scale=2.5, generator=torch.Generator().manual_seed(7),
              output_type="np").images
    assert first.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(first, again)
    # the EMA weights were saved: equal to the checkpoint's shadow parameters
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    torch.testing.assert_close(next(a.unet.parameters()), state["ema"]["shadow_params"][0])


def test_bad_training_inputs_are_one_line_errors(tmp_path, toy):
    from pathgen.diffusion.train import train_diffusion

    stores, encoder = toy
    with pytest.raises(ConfigError, match="data.encoder"):
        train_diffusion(tiny_config(tmp_path / "a", stores, "", "run.max_steps=1"))
    with pytest.raises(EncoderError, match="not found"):
        train_diffusion(tiny_config(tmp_path / "b", stores, tmp_path / "nowhere", "run.max_steps=1"))
    with pytest.raises(ConfigError, match="CrossAttn"):
        tiny_config(tmp_path / "c", stores, encoder, "model.conditioning=timestep")
    with pytest.raises(ConfigError, match="model.vae"):
        tiny_config(tmp_path / "d", stores, encoder, "model.space=latent")


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_latent_space_with_a_local_vae_caches_latents_and_saves_the_vae(tmp_path, toy, kind):
    from diffusers import AutoencoderKL, VQModel

    from pathgen.diffusion.pipeline import load_pipeline
    from pathgen.diffusion.train import train_diffusion

    stores, encoder = toy
    torch.manual_seed(0)
    blocks = dict(block_out_channels=(8, 16), norm_num_groups=8, layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae = AutoencoderKL(latent_channels=4, **blocks) if kind == "kl" else VQModel(latent_channels=4,
                                                                                   num_vq_embeddings=32, **blocks)
    vae.save_pretrained(tmp_path / "vae")  # a folder from_pretrained loads, as on an offline server
    cfg = tiny_config(tmp_path / "run", stores, encoder, "run.max_steps=2", "model.space=latent",
                      f"model.vae={tmp_path / 'vae'}", f"model.vae_type={kind}", "model.patch_size=1")
    out = train_diffusion(cfg)
    cache = next((out / "cache").iterdir())
    assert np.load(cache / "latents.npy").shape == (32, 4, 8, 8)  # 16 px at 2 px per latent
    pipe = load_pipeline(out / "model")
    assert type(pipe.vae).__name__ == type(vae).__name__ and pipe.image_size == 16
    images = pipe(embeddings=torch.randn(2, 32), num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


@pytest.mark.slow
def test_conditioning_matters_views_are_retrieved_to_their_own_class(tmp_path, toy):
    # 4 texture classes; 150 steps of a 40 k-parameter UNet. Each view is re-encoded and matched to its nearest
    # real patch: the class of that patch should be the class whose embedding conditioned the view (chance 1/4).
    import torch.nn.functional as F

    from pathgen.diffusion.encoder import FrozenEncoder
    from pathgen.diffusion.pipeline import load_pipeline
    from pathgen.diffusion.sample import make_sampler, sample
    from pathgen.diffusion.sources import SourcePatches
    from pathgen.diffusion.train import train_diffusion

    stores, encoder = toy
    out = train_diffusion(tiny_config(tmp_path / "run", stores, encoder, "run.max_steps=150", "optim.epochs=1000",
                                      "data.batch_size=16", "data.held_out=0", "run.save_every_epochs=1000"))
    pipe = load_pipeline(out / "model")
    pipe.scheduler = make_sampler("dpm++", pipe.scheduler.config)
    frozen, patches = FrozenEncoder(encoder), SourcePatches(stores, 16)
    real = F.normalize(frozen(patches.read(patches.pairs(np.arange(32)))), dim=-1)
    label = np.repeat(np.arange(4), 8)  # one store per class

    def retrieved_class(condition: torch.Tensor) -> np.ndarray:
        views = sample(pipe, condition, seeds=range(32), steps=10, guidance_scale=2.5)
        return label[(F.normalize(frozen(views), dim=-1) @ real.T).argmax(1).numpy()]

    own = (retrieved_class(real) == label).mean()
    assert own >= 0.6, own
    # the same noise seeds conditioned on the next class's embeddings give that class: the condition decides
    shifted = np.roll(np.arange(32), -8)  # patch i gets the embedding of patch i + 8 (the next class)
    assert (retrieved_class(real[shifted]) == label[shifted]).mean() >= 0.6
    again = retrieved_class(real)
    assert (again == retrieved_class(real)).all()  # deterministic


@pytest.mark.slow
def test_two_gloo_ranks_under_torchrun_train_and_save_one_model(tmp_path, toy):
    # rank 0 builds the embedding cache while rank 1 waits; both train; only rank 0 logs and saves the model
    import os
    import subprocess

    stores, encoder = toy
    out = tmp_path / "ddp"
    cfg = tiny_config(out, stores, encoder)
    overrides = [f"data.sources=[{','.join(map(str, stores))}]", f"data.encoder={encoder}", "data.image_size=16",
                 "data.held_out=0", "data.batch_size=4", "data.num_workers=0", "noise.num_train_timesteps=100",
                 "run.max_steps=2", "run.log_every=1", "run.device=cpu", "sample.every_steps=0",
                 "sample.steps=2", "sample.per_embedding=1"]
    overrides += [f"model.{k}={v}" for k, v in cfg.model.model_dump(include={
        "patch_size", "block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
        "attention_head_dim", "norm_num_groups", "projection_dim"}).items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pathgen",
           "pretrain", "diffusion", "--out", str(out), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_log(out)] == [1, 2]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 2 and len(state["rng"]) == 2 and state["iters_per_epoch"] == 4  # 32 / (2 x 4)
    assert (out / "model" / "model_index.json").is_file()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_the_loss_target_is_the_prediction_type(kind):
    """A UNet that outputs exactly eps / v / x0 has zero loss for its own prediction type, and not for the others."""
    from diffusers import DDPMScheduler

    from pathgen.diffusion.train import diffusion_loss
    from pathgen.runtime.device import Precision

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=kind)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    captured = {}

    def add_noise(x, noise, t):  # record what the loss drew, so the fake UNets below can answer exactly
        captured.update(noise=noise, t=t)
        return DDPMScheduler.add_noise(scheduler, x, noise, t)

    scheduler.add_noise = add_noise
    answers = {
        "epsilon": lambda: captured["noise"],
        "v_prediction": lambda: scheduler.get_velocity(x0, captured["noise"], captured["t"]),
        "sample": lambda: x0,
    }
    for answer, make in answers.items():
        loss = diffusion_loss(lambda noisy, t, e, drop, make=make: make(), scheduler, x0, torch.zeros(4, 2), 0.1,
                              Precision("cpu", None))
        assert (loss.item() < 1e-10) == (answer == kind), (answer, loss.item())
