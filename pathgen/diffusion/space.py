"""The space the diffusion runs in: pixels, or the latents of a frozen diffusers VAE.

    z = encode(images, vae, patch_size)     # images [B, 3, S, S] in [-1, 1] -> what the UNet denoises
    images = decode(z, vae, patch_size)     # and back, clamped to [-1, 1]

Pixel space may be "patched": each p x p block of pixels becomes 3 p^2 channels (an invertible pixel unshuffle,
as in Hoogeboom et al. 2023, "simple diffusion"). The diffusion is still over every pixel, with i.i.d. noise per
pixel; only the UNet sees a p-times smaller grid, which costs ~p^2 less compute. That is what makes pixel space at
the demo's 64 px trainable in CPU minutes. Latent space: AutoencoderKL (the posterior mean is used) or VQModel (its
pre-quantisation latents; decode quantises), scaled by the VAE's scaling_factor (and shift_factor when it has one).
"""

from pathlib import Path

import torch
import torch.nn.functional as F


def load_vae(name: str, kind: str = "kl", subfolder: str | None = None):
    """A frozen AutoencoderKL ("kl") or VQModel ("vq") from a local folder or a hub id (HF_HUB_OFFLINE=1 works)."""
    from diffusers import AutoencoderKL, VQModel
    from diffusers.utils import is_accelerate_available

    from pathgen.errors import ConfigError

    cls = {"kl": AutoencoderKL, "vq": VQModel}[kind]
    try:
        vae = cls.from_pretrained(name, subfolder=subfolder, low_cpu_mem_usage=is_accelerate_available())
    except (OSError, ValueError) as err:
        where = Path(name) / subfolder if subfolder else name
        raise ConfigError(where, f"cannot load the {cls.__name__} ({str(err).splitlines()[0]})") from None
    return vae.eval().requires_grad_(False)


def vae_scale_factor(vae) -> int:
    """Image pixels per latent pixel (8 for Stable Diffusion's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _factors(vae) -> tuple[float, float]:
    scale = getattr(vae.config, "scaling_factor", None) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(scale), float(shift)


def channels_and_size(image_size: int, vae=None, patch_size: int = 1) -> tuple[int, int]:
    """(channels, side) of the UNet's input for images of image_size px."""
    if vae is not None:
        return int(vae.config.latent_channels), image_size // vae_scale_factor(vae)
    return 3 * patch_size**2, image_size // patch_size


@torch.no_grad()
def encode(images: torch.Tensor, vae=None, patch_size: int = 1) -> torch.Tensor:
    if vae is None:
        return F.pixel_unshuffle(images, patch_size) if patch_size > 1 else images
    scale, shift = _factors(vae)
    images = images.to(vae.dtype)
    if hasattr(vae, "quantize"):  # VQModel
        z = vae.encode(images).latents
    else:
        z = vae.encode(images).latent_dist.mean
    return ((z - shift) * scale).float()


@torch.no_grad()
def decode(z: torch.Tensor, vae=None, patch_size: int = 1) -> torch.Tensor:
    if vae is None:
        images = F.pixel_shuffle(z, patch_size) if patch_size > 1 else z
    else:
        scale, shift = _factors(vae)
        images = vae.decode((z / scale + shift).to(vae.dtype)).sample.float()
    return images.clamp(-1, 1)
