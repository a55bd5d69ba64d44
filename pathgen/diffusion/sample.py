"""Samplers and seeded sampling: which diffusers scheduler makes the images, and the noise of each image.

    pipe.scheduler = make_sampler("dpm++", pipe.scheduler.config)     # DPM-Solver++ (2M), the default
    images = sample(pipe, embeddings, seeds, steps=20, guidance_scale=2.5)   # uint8 [B, S, S, 3]

Every sampler is built from the training DDPMScheduler's config (betas, prediction type), so any of them samples
the same model. Each image's noise comes from its own CPU generator seeded with its seed: an image is the same
whatever batch it is made in, on the CPU or a GPU.
"""

from collections.abc import Sequence

import numpy as np
import torch

from pathgen.errors import ConfigError

SAMPLERS = ("dpm++", "ddim", "ddpm")


def check_sampler(name: str, guidance_scale: float | None = None) -> None:
    if name not in SAMPLERS:
        raise ConfigError("--sampler", f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    if guidance_scale is not None and guidance_scale < 0:
        raise ConfigError("--guidance-scale", f"must be >= 0, got {guidance_scale}")


def make_sampler(name: str, config):
    """A fresh diffusers scheduler of kind `name` from a (training) scheduler config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    check_sampler(name)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    return DDPMScheduler.from_config(config)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounded as diffusers' numpy_to_pil does."""
    return (images * 255).round().astype(np.uint8)


def sample(pipe, embeddings: torch.Tensor, seeds: Sequence[int], steps: int = 20,
           guidance_scale: float = 2.5) -> np.ndarray:
    """uint8 [B, S, S, 3] images of `embeddings` [B, D], image i made from the noise of seeds[i]."""
    out = pipe(embeddings=embeddings, num_inference_steps=steps, guidance_scale=guidance_scale,
               generator=generators(seeds), output_type="np")
    return to_uint8(out.images)
