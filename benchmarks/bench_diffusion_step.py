"""Diffusion training-step time: pathgen's step against a plain diffusers training loop.

Both sides train the same UNet2DConditionModel (built from one config, same initial weights), on the same batch,
at the same precision (fp32 on the CPU; bf16 autocast on CUDA GPUs that have it), with AdamW, global-norm
clipping at 1.0 and a diffusers EMAModel in fp32:

    pathgen: pathgen.diffusion.train.training_targets (uint8 -> [-1, 1], dihedral flip, patching) and
             diffusion_loss (Denoiser: L2-normalised embedding -> projection -> one cross-attention token, CFG drop)
    plain:   the diffusers text-to-image recipe: noise, timesteps, add_noise, get_velocity, unet(..,
             encoder_hidden_states=linear(embedding)[:, None]), MSE, on an already patched float batch

The two are timed alternately (A B, B A, ...) so that machine noise hits both alike; we report the median step.

    python benchmarks/bench_diffusion_step.py                                   # tiny_cpu.yaml, batch 32
    python benchmarks/bench_diffusion_step.py --config configs/diffusion/histo_ldm256.yaml --batch 16   # a GPU
"""

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch import nn

from pathgen.config import load_config
from pathgen.diffusion import space
from pathgen.diffusion.config import DiffusionConfig
from pathgen.diffusion.model import Denoiser, build_noise_scheduler, build_projection, build_unet
from pathgen.diffusion.train import diffusion_loss, param_groups, training_targets
from pathgen.runtime.device import get_device, precision_for

EMBED_DIM = 384


def optimizer_step(loss, model, optimizer, scaler, ema) -> None:
    """The update both sides share (the trainer's own lines)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    ema.step(model.parameters())


class PathgenStep:
    def __init__(self, cfg, unet, device, precision):
        self.cfg, self.precision = cfg, precision
        self.model = Denoiser(unet, build_projection(cfg.model, EMBED_DIM)).to(device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 0.01), lr=1e-4)
        self.scaler, self.ema = precision.grad_scaler(), EMAModel(self.model.parameters())
        self.ema.to(device=device, dtype=torch.float32)
        self.noise = build_noise_scheduler(cfg.noise, clip_sample=True)

    def __call__(self, images_uint8, latents, embeddings):
        m = self.cfg.model
        target = images_uint8 if m.space == "pixel" else latents
        x0 = training_targets(target, m.space, m.patch_size, flips=True)
        loss = diffusion_loss(self.model, self.noise, x0, embeddings, m.cond_drop_prob, self.precision)
        value = loss.item()
        optimizer_step(loss, self.model, self.optimizer, self.scaler, self.ema)
        return value


class PlainStep:
    def __init__(self, cfg, unet, device, precision):
        self.cfg, self.precision = cfg, precision
        self.unet = unet.to(device)
        self.proj = nn.Linear(EMBED_DIM, cfg.model.projection_dim).to(device)
        self.model = nn.ModuleDict({"unet": self.unet, "proj": self.proj})
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.scaler, self.ema = precision.grad_scaler(), EMAModel(self.model.parameters())
        self.ema.to(device=device, dtype=torch.float32)
        self.noise = build_noise_scheduler(cfg.noise, clip_sample=True)

    def __call__(self, x0, embeddings):
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (len(x0),), device=x0.device)
        noisy = self.noise.add_noise(x0, noise, t)
        goal = self.noise.get_velocity(x0, noise, t)
        with self.precision.autocast():
            pred = self.unet(noisy, t, encoder_hidden_states=self.proj(embeddings)[:, None]).sample
        loss = F.mse_loss(pred.float(), goal.float())
        value = loss.item()
        optimizer_step(loss, self.model, self.optimizer, self.scaler, self.ema)
        return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/diffusion/tiny_cpu.yaml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    cfg = load_config(DiffusionConfig, args.config)
    device = get_device()
    precision = precision_for(device)
    vae = None
    if cfg.model.space == "latent":  # an f8 VAE's shape only (as Stable Diffusion's): the latents are made up
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(latent_channels=4, block_out_channels=(32, 32, 32, 32),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    channels, side = space.channels_and_size(cfg.data.image_size, vae, cfg.model.patch_size)
    torch.manual_seed(0)
    unet = build_unet(cfg.model, channels, side)
    impls = {"pathgen": PathgenStep(cfg, copy.deepcopy(unet), device, precision),
             "plain": PlainStep(cfg, copy.deepcopy(unet), device, precision)}
    g = torch.Generator().manual_seed(0)
    s, b = cfg.data.image_size, args.batch
    images = torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8).to(device)
    latents = torch.randn(b, channels, side, side, generator=g).to(device)
    embeddings = torch.randn(b, EMBED_DIM, generator=g).to(device)
    # the plain loop gets its batch ready-made: [-1, 1] floats, patched (or the latents)
    plain_x0 = space.encode(images.float() / 127.5 - 1, None, cfg.model.patch_size) if vae is None else latents

    times: dict[str, list[float]] = {name: [] for name in impls}
    for i in range(args.warmup + args.steps):
        order = list(impls) if i % 2 == 0 else list(impls)[::-1]  # cancel order effects
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if name == "pathgen":
                impls[name](images, latents, embeddings)
            else:
                impls[name](plain_x0, embeddings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(t) for name, t in times.items()}
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"device={device} threads={torch.get_num_threads()} precision={precision.name} config={args.config} "
          f"UNet {params:.2f} M params on {channels} x {side} x {side}, batch {b}, {args.steps} steps")
    for name, t in med.items():
        print(f"  {name:8s} median step {t * 1000:8.1f} ms   ({b / t:6.1f} img/s)")
    print(f"  ratio pathgen / plain diffusers = {med['pathgen'] / med['plain']:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
