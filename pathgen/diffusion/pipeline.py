"""`EmbeddingConditionedPipeline`: images from SSL embeddings, as a diffusers DiffusionPipeline.

    pipe = EmbeddingConditionedPipeline.from_pretrained("runs/diffusion/model")
    images = pipe(embeddings=e, num_inference_steps=20, guidance_scale=2.5, generator=g).images

The model folder is what `save_pretrained` writes: model_index.json, unet/, scheduler/, projection/, vae/ (latent
space only) and pathgen.json (the encoder the model was conditioned on, with its sha256; embedding dim, image size,
mpp and space). `generator` may be one torch.Generator or one per embedding: with one each, an image depends only on
its own embedding and generator, not on the batch it was made in (`pathgen generate` relies on that).
"""

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from pathgen.diffusion import space
from pathgen.diffusion.conditioning import EmbeddingProjection  # noqa: F401 - imported for from_pretrained

METADATA = "pathgen.json"


class EmbeddingConditionedPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "projection->unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet, scheduler, projection, vae=None, patch_size: int = 1):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, projection=projection, vae=vae)
        self.register_to_config(patch_size=patch_size)
        self.image_processor = VaeImageProcessor(do_normalize=True)
        self.metadata: dict = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "EmbeddingConditionedPipeline":
        from diffusers.utils import is_accelerate_available

        # without accelerate, diffusers warns at every load that it falls back to this: ask for it
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        meta = Path(pretrained_model_name_or_path) / METADATA
        pipe.metadata = json.loads(meta.read_text()) if meta.is_file() else {}
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        if self.metadata:
            (Path(save_directory) / METADATA).write_text(json.dumps(self.metadata, indent=2))

    @property
    def image_size(self) -> int:
        grid = self.unet.config.sample_size
        if self.vae is not None:
            return grid * space.vae_scale_factor(self.vae)
        return grid * self.config.patch_size

    def prepare_noise(self, batch: int, generator=None, device=None) -> torch.Tensor:
        """The initial noise of `batch` images (one generator each: each image's own noise, on the CPU if they are)."""
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        return randn_tensor((batch, c, s, s), generator=generator, device=device or self._execution_device,
                            dtype=torch.float32)

    @torch.no_grad()
    def __call__(
        self,
        embeddings: torch.Tensor,
        num_inference_steps: int = 20,
        guidance_scale: float = 2.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Images for `embeddings` [B, D] (raw SSL embeddings: the projection L2-normalises them).

        Classifier-free guidance: the conditional and the unconditional (null-token) passes run as one batch, and
        pred = uncond + guidance_scale * (cond - uncond); guidance_scale 1 is the conditional model alone.
        output_type: "pil", "np" (float [B, S, S, 3] in [0, 1]) or "pt" (float [B, 3, S, S] in [0, 1]).
        """
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        device = self._execution_device
        e = torch.as_tensor(embeddings, dtype=torch.float32, device=device)
        batch = len(e)
        condition = self.projection(e)
        guided = guidance_scale != 1.0
        if guided:
            condition = torch.cat([self.projection.null_condition(batch).to(condition.dtype), condition])
        unet_kwargs = self.projection.unet_kwargs(condition)

        x = self.prepare_noise(batch, generator, device) if latents is None else latents.to(device, torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            pred = self.unet(model_in.to(self.unet.dtype), t, **unet_kwargs).sample.float()
            if guided:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            x = self.scheduler.step(pred, t, x, generator=generator).prev_sample

        images = space.decode(x, self.vae, self.config.patch_size)
        images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def make_pipeline(denoiser, scheduler, vae=None, patch_size: int = 1,
                  metadata: dict | None = None) -> EmbeddingConditionedPipeline:
    """The pipeline around a trained Denoiser's UNet and projection (shared, not copied)."""
    pipe = EmbeddingConditionedPipeline(unet=denoiser.unet, scheduler=scheduler, projection=denoiser.projection,
                                        vae=vae, patch_size=patch_size)
    pipe.metadata = dict(metadata or {})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model_dir: str | Path, device: torch.device | str = "cpu") -> EmbeddingConditionedPipeline:
    """A model folder written by `pathgen pretrain diffusion`, on `device`; ModelError in one line if it is not."""
    from pathgen.errors import ModelError

    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise ModelError(model_dir, "not a diffusion model folder (no model_index.json; train one with "
                         "`pathgen pretrain diffusion`)")
    if not (model_dir / METADATA).is_file():
        raise ModelError(model_dir, f"no {METADATA}: not written by pathgen, so its encoder is unknown")
    from diffusers.utils import logging

    logging.disable_progress_bar()  # "Loading pipeline components": three tiny folders, not worth a bar
    try:
        pipe = EmbeddingConditionedPipeline.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelError(model_dir, f"cannot load ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    finally:
        logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
