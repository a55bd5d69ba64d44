"""Training the embedding-conditioned diffusion model (Gen-SIS stage 2): one loop, top to bottom.

    stores -> frozen encoder embeddings (+ VAE latents), once, cached -> (target, e) batches -> dihedral flip
           -> DDPM noise at a random timestep, e dropped to the null token with p=0.1 -> UNet -> MSE on eps (or v)
           -> AdamW step (warm-up, clipping) -> EMA (fp32) -> logs, sample grids, checkpoints -> <out>/model/

What every trainer shares (device and precision, torchrun, checkpoints and resume, the resumable loader, logs)
lives in pathgen.runtime; this file holds only what is the diffusion model's.
"""

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathgen.diffusion import space
from pathgen.diffusion.config import DiffusionConfig
from pathgen.diffusion.data import TrainingSet, dihedral, split_held_out
from pathgen.diffusion.model import Denoiser, build_noise_scheduler, build_projection, build_unet
from pathgen.errors import ConfigError, StoreError
from pathgen.runtime.distributed import all_reduce_mean, barrier, is_distributed
from pathgen.runtime.loader import ResumableLoader
from pathgen.runtime.progress import progress_bar
from pathgen.runtime.run import TrainingRun
from pathgen.runtime.seeding import seed_everything

LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


# ---------------------------------------------------------------------------------------------------------------
# building blocks


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only; biases, norms and the null token get none."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def training_targets(target: torch.Tensor, space_name: str, patch_size: int, flips: bool) -> torch.Tensor:
    """A loaded batch as the x0 the UNet learns: pixels in [-1, 1] (patched), or latents; each dihedrally flipped.

    Pixels are flipped before they are patched (a flip must move pixels, not the channels they were folded
    into); latents are flipped as they are, a cheap stand-in for the latents of the flipped patch.
    """
    x0 = target.float().div_(127.5).sub_(1.0) if space_name == "pixel" else target
    if flips:
        x0 = dihedral(x0, torch.randint(0, 8, (len(x0),), device=x0.device))
    return space.encode(x0, None, patch_size) if space_name == "pixel" else x0


def diffusion_loss(model: nn.Module, noise_scheduler, x0: torch.Tensor, embeddings: torch.Tensor,
                   cond_drop_prob: float, precision) -> torch.Tensor:
    """DDPM's loss at a random timestep: MSE between the UNet's prediction and eps (or v, or x0), in fp32.

    Each row's embedding is replaced by the null condition with probability cond_drop_prob, which teaches the
    same UNet the unconditional model classifier-free guidance needs.
    """
    noise = torch.randn_like(x0)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
    drop = torch.rand(len(x0), device=x0.device) < cond_drop_prob
    noisy = noise_scheduler.add_noise(x0, noise, t)
    kind = noise_scheduler.config.prediction_type
    goal = {"epsilon": noise, "sample": x0}.get(kind)
    if goal is None:
        goal = noise_scheduler.get_velocity(x0, noise, t)
    with precision.autocast():
        pred = model(noisy, t, embeddings, drop)
    return F.mse_loss(pred.float(), goal.float())  # outside autocast: bf16 would round the small late losses


def store_mpp(stores: list[Path]) -> float | None:
    """The stores' common target mpp (None when they do not record one or disagree)."""
    from pathgen.store import open_store

    values = set()
    for path in stores:
        with open_store(path) as store:
            values.add(store.attrs.get("target_mpp"))
    return values.pop() if len(values) == 1 else None


def prepare_data(cfg: DiffusionConfig, run: TrainingRun):
    """(encoder, cache, patch dataset, vae, stores): the cache is built by the main process, once."""
    from pathgen.data.augment import ResizeCenterCrop
    from pathgen.diffusion.cache import build_cache, cache_key, open_cache
    from pathgen.diffusion.encoder import FrozenEncoder
    from pathgen.store import PatchDataset, find_stores, open_store

    d, m = cfg.data, cfg.model
    if not d.sources:
        raise ConfigError("data.sources", "no training data configured (patch stores, folders or manifests)")
    if not d.encoder:
        raise ConfigError("data.encoder", "no encoder configured (an export of `pathgen pretrain ssl`)")
    stores = find_stores(d.sources)
    if not stores:
        raise StoreError(d.sources[0], "no patch stores found")
    content_ids = []
    for path in stores:
        with open_store(path) as store:
            content_ids.append(store.content_id)
    encoder = FrozenEncoder(d.encoder, run.device)
    vae = None
    if m.space == "latent":
        vae = space.load_vae(m.vae, m.vae_type, m.vae_subfolder).to(run.device)
        if d.image_size % space.vae_scale_factor(vae):
            raise ConfigError("data.image_size", f"{d.image_size} is not a multiple of the VAE's "
                              f"{space.vae_scale_factor(vae)} px per latent")
    elif d.image_size % m.patch_size:
        raise ConfigError("data.image_size", f"{d.image_size} is not a multiple of model.patch_size {m.patch_size}")
    patches = PatchDataset(stores, transform=ResizeCenterCrop(d.image_size), min_tissue=d.min_tissue)
    vae_id = None if vae is None else f"{m.vae_type}:{m.vae}" + (f"/{m.vae_subfolder}" if m.vae_subfolder else "")
    key = cache_key(encoder, stores, content_ids, d.image_size, d.min_tissue, vae_id)
    cache_dir = Path(d.cache_dir) if d.cache_dir else run.out_dir / "cache"
    if run.is_main and open_cache(cache_dir, key) is None:
        build_cache(cache_dir, key, patches, encoder, vae, d.encode_batch_size, d.num_workers)
    barrier()
    cache = open_cache(cache_dir, key)
    return encoder, cache, patches, vae, stores


def sample_grid(denoiser: Denoiser, ema, scheduler_config, cfg: DiffusionConfig, vae, held_images: np.ndarray,
                held_embeddings: torch.Tensor, device: torch.device) -> np.ndarray:
    """Rows of (held-out patch, its samples) from the EMA weights, with fixed noise: comparable across steps."""
    from pathgen.diffusion.pictures import image_rows
    from pathgen.diffusion.pipeline import make_pipeline
    from pathgen.diffusion.sample import make_sampler, sample

    s = cfg.sample
    model = copy.deepcopy(denoiser).eval()
    ema.copy_to(model.parameters())
    pipe = make_pipeline(model, make_sampler(s.sampler, scheduler_config), vae, cfg.model.patch_size)
    k = s.per_embedding
    e = held_embeddings.repeat_interleave(k, 0).to(device)
    images = sample(pipe, e, [s.seed * 1000 + i for i in range(len(e))], s.steps, s.guidance_scale)
    rows = [[held_images[r], *images[r * k:(r + 1) * k]] for r in range(len(held_images))]
    return np.asarray(image_rows(rows))


def save_model(denoiser: Denoiser, ema, noise_scheduler, vae, cfg: DiffusionConfig, metadata: dict,
               out: Path) -> Path:
    """<out>/model/: the EMA weights as a diffusers-loadable EmbeddingConditionedPipeline folder."""
    from pathgen.diffusion.pipeline import make_pipeline

    model = copy.deepcopy(denoiser).cpu()
    ema.copy_to(model.parameters())
    pipe = make_pipeline(model, noise_scheduler, None if vae is None else vae.cpu(), cfg.model.patch_size, metadata)
    pipe.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the loop


def train_diffusion(cfg: DiffusionConfig, resume: str | Path | None = None) -> Path:
    """Train as configured; returns the output directory.

    <out>/config.yaml, cache/, checkpoints/{last,step_N}.pt, tensorboard/, log.jsonl, samples/step_N.png and
    model/ (EmbeddingConditionedPipeline.from_pretrained loads it). `resume`: a checkpoint path, or "auto" for
    <out>/checkpoints/last.pt when present.
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from PIL import Image

    from pathgen import __version__

    run = TrainingRun(cfg, resume)
    device, precision, world = run.device, run.precision, run.world
    d, m, o = cfg.data, cfg.model, cfg.optim

    # ---- data: embeddings (and latents) once, then a held-out few for the sample grids ----
    encoder, cache, patches, vae, stores = prepare_data(cfg, run)
    del encoder.model  # frozen and done with: training never runs it again
    train_idx, held_idx = split_held_out(len(patches), d.held_out, cfg.run.seed)
    pixel = m.space == "pixel"
    dataset = TrainingSet(cache.path, train_idx, patches if pixel else None)
    batch = d.batch_size
    loader = ResumableLoader(dataset, batch, seed=cfg.run.seed, num_workers=d.num_workers,
                             pin_memory=device.type == "cuda")
    iters_per_epoch = loader.iters_per_epoch
    if iters_per_epoch == 0:
        raise ConfigError("data.batch_size", f"{len(dataset)} patches is less than one batch of {batch} x {world}")
    held_embeddings = torch.from_numpy(np.array(cache.embeddings()[held_idx]))
    held_images = np.stack([patches[int(i)][0].permute(1, 2, 0).numpy() for i in held_idx]) if len(held_idx) else None

    # ---- models, optimizer, EMA (same init on every rank: seeded before the rank-specific seed) ----
    seed_everything(cfg.run.seed)
    channels, side = space.channels_and_size(d.image_size, vae, m.patch_size)
    denoiser = Denoiser(build_unet(m, channels, side), build_projection(m, encoder.embed_dim)).to(device)
    # the EMA shadow weights in fp32: bf16 cannot hold (1 - decay) * (w - ema) updates, they round to nothing
    ema = EMAModel(denoiser.parameters(), decay=o.ema_decay, update_after_step=o.ema_update_after_step)
    ema.to(device=device, dtype=torch.float32)
    model = nn.parallel.DistributedDataParallel(denoiser) if is_distributed() else denoiser
    optimizer = torch.optim.AdamW(param_groups(denoiser, o.weight_decay), lr=o.lr, betas=tuple(o.betas))
    total_steps = o.epochs * iters_per_epoch
    last_step = min(total_steps, cfg.run.max_steps or total_steps)
    lr_schedule = get_scheduler(LR_SCHEDULES[o.lr_schedule], optimizer, num_warmup_steps=o.warmup_steps,
                                num_training_steps=total_steps)
    scaler = precision.grad_scaler()  # active in fp16 only
    noise_scheduler = build_noise_scheduler(cfg.noise, clip_sample=pixel)
    seed_everything(cfg.run.seed + run.rank)

    # ---- resume ----
    step = 0
    state = run.load()
    if state is not None:
        step = run.restore(state, {"model": denoiser, "optimizer": optimizer, "lr_schedule": lr_schedule,
                                   "ema": ema, "scaler": scaler}, iters_per_epoch)
        ema.to(device=device, dtype=torch.float32)
    run.start(step)

    def checkpoint(epoch: int, numbered: bool = False) -> None:
        run.save({"model": denoiser.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
                  "lr_schedule": lr_schedule.state_dict(), "scaler": scaler.state_dict(),
                  "iters_per_epoch": iters_per_epoch}, step, epoch, numbered)

    def grid(tag_step: int) -> None:
        if not run.is_main or held_images is None:
            return
        picture = sample_grid(denoiser, ema, noise_scheduler.config, cfg, vae, held_images, held_embeddings, device)
        run.log.image("samples", picture, tag_step)
        (run.out_dir / "samples").mkdir(exist_ok=True)
        Image.fromarray(picture).save(run.out_dir / "samples" / f"step_{tag_step:07d}.png")

    bar = progress_bar(total=last_step * batch * world, initial=step * batch * world, unit="img", unit_scale=True,
                       desc="pretrain diffusion", disable=not run.is_main)
    start_step, t0, loss_value = step, time.perf_counter(), float("nan")
    while step < last_step:
        epoch = step // iters_per_epoch
        model.train()
        for target, embeddings in loader.epoch(epoch, skip_batches=step % iters_per_epoch):
            x0 = training_targets(target.to(device, non_blocking=True), m.space, m.patch_size, d.flips)
            loss = diffusion_loss(model, noise_scheduler, x0, embeddings.to(device, non_blocking=True),
                                  m.cond_drop_prob, precision)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step}; stopping (lower optim.lr?)")

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients (a no-op outside fp16)
            grad_norm = torch.nn.utils.clip_grad_norm_(denoiser.parameters(), o.clip_grad or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            lr_schedule.step()
            ema.step(denoiser.parameters())
            step += 1
            bar.update(batch * world)

            if step % cfg.run.log_every == 0 or step == last_step:
                mean_loss = all_reduce_mean(loss.detach().float().clone()).item()
                lr = lr_schedule.get_last_lr()[0]
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                run.log.scalars(step, {"loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                                       "ema_decay": float(ema.cur_decay_value or 0.0)}, prefix="train/", epoch=epoch)
            if cfg.sample.every_steps and step % cfg.sample.every_steps == 0 and step != last_step:
                grid(step)
            if cfg.run.save_every_steps and step % cfg.run.save_every_steps == 0:
                checkpoint(epoch, numbered=True)
            if step >= last_step or step % iters_per_epoch == 0:
                break
        epoch_done = step % iters_per_epoch == 0
        if (epoch_done and (epoch + 1) % cfg.run.save_every_epochs == 0) or step == last_step:
            checkpoint(epoch if not epoch_done else epoch + 1)
        barrier()
    bar.close()

    if run.is_main:
        grid(step)
        metadata = {
            "encoder": str(Path(d.encoder).resolve()), "encoder_sha256": encoder.sha256,
            "embed_dim": encoder.embed_dim, "image_size": d.image_size, "mpp": store_mpp(stores),
            "space": m.space, "patch_size": m.patch_size, "vae": m.vae, "conditioning": m.conditioning,
            "prediction_type": cfg.noise.prediction_type, "steps_trained": step, "pathgen_version": __version__,
            "config": run.config_dict,
        }
        model_dir = save_model(denoiser, ema, noise_scheduler, vae, cfg, metadata, run.out_dir / "model")
        seconds = time.perf_counter() - t0
        rate = (step - start_step) * batch * world / max(seconds, 1e-9)
        print(f"pretrain diffusion: {step} steps ({step / iters_per_epoch:.2f} epochs), final loss {loss_value:.4f}, "
              f"{rate:.1f} img/s ({precision.name}), model -> {model_dir}")
    run.close()
    barrier()
    return run.out_dir
