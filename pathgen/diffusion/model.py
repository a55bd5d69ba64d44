"""The embedding-conditioned denoiser: a diffusers UNet2DConditionModel plus the embedding projection.

Both are built from the config; `Denoiser` holds them as one module, so that DDP, the optimizer and the EMA see
one set of parameters, while the model folder keeps them as two diffusers components (unet/, projection/).
"""

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from pathgen.diffusion.conditioning import EmbeddingProjection
from pathgen.diffusion.config import ModelConfig, NoiseConfig


def build_unet(cfg: ModelConfig, in_channels: int, sample_size: int) -> UNet2DConditionModel:
    """The UNet of `cfg`: cross_attention_dim = projection width, or the projection added to the timestep."""
    timestep = cfg.conditioning == "timestep"
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        mid_block_type=cfg.mid_block_type,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        cross_attention_dim=cfg.projection_dim,
        class_embed_type="projection" if timestep else None,
        projection_class_embeddings_input_dim=cfg.projection_dim if timestep else None,
    )


def build_projection(cfg: ModelConfig, embed_dim: int) -> EmbeddingProjection:
    return EmbeddingProjection(embed_dim, cfg.projection_dim, mode=cfg.conditioning, null=cfg.null_condition)


def build_noise_scheduler(cfg: NoiseConfig, clip_sample: bool) -> DDPMScheduler:
    """Training's DDPMScheduler. clip_sample: pixel space only (latents are not bounded to [-1, 1])."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, beta_start=cfg.beta_start,
        beta_end=cfg.beta_end, prediction_type=cfg.prediction_type, clip_sample=clip_sample,
    )


class Denoiser(nn.Module):
    """(noisy sample, timestep, embedding, drop mask) -> the UNet's prediction (epsilon or v)."""

    def __init__(self, unet: UNet2DConditionModel, projection: EmbeddingProjection):
        super().__init__()
        self.unet, self.projection = unet, projection

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        condition = self.projection(embeddings, drop)
        return self.unet(sample, timesteps, **self.projection.unet_kwargs(condition)).sample
