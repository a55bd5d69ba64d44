"""How an SSL embedding conditions the UNet: L2 normalisation, a learned projection, the null token, SLERP.

    tokens = projection(e)                  # [B, 1, width] cross-attention token, or [B, width] for the timestep
    tokens = projection(e, drop=mask)       # rows where mask is True get the null condition (CFG training)
    e_int = slerp(e1, e2, alpha)            # weight alpha on e1 (Gen-SIS interpolated self-augmentations)

The projection is a diffusers ModelMixin, so it is saved beside the UNet in the model folder and loads with it.
"""

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # ModelMixin must be a name here: diffusers looks it up to load us
from diffusers.configuration_utils import register_to_config
from torch import nn

PARALLEL_DOT = 0.9995  # above this cosine SLERP's sin(omega) is ~0: fall back to the linear mix, its limit


def l2_normalize(e: torch.Tensor) -> torch.Tensor:
    return F.normalize(e.float(), dim=-1)


def slerp(e1: torch.Tensor, e2: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the L2-normalised e1 and e2 ([..., D]) with weight `alpha` on e1.

    alpha = 1 gives e1, alpha = 0 gives e2 (both normalised), and every alpha gives a unit vector on the great
    circle between them. SLERP rather than a linear mix because high-dimensional SSL embeddings live near the unit
    sphere, and a linear mix of two of them falls inside it. Near-parallel pairs use the linear mix (no NaN).
    """
    a, b = l2_normalize(e1), l2_normalize(e2)
    alpha = torch.as_tensor(alpha, dtype=a.dtype, device=a.device)
    if alpha.ndim == 1 and a.ndim == 2:  # one alpha per row
        alpha = alpha[:, None]
    dot = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(dot)
    sin = torch.sin(omega).clamp_min(1e-12)
    spherical = (torch.sin(alpha * omega) * a + torch.sin((1 - alpha) * omega) * b) / sin
    linear = alpha * a + (1 - alpha) * b
    return torch.where(dot > PARALLEL_DOT, linear, spherical)


class EmbeddingProjection(ModelMixin, ConfigMixin):
    """L2-normalised embedding -> learned linear layer -> the UNet's condition; the null condition for CFG.

    mode "cross_attention": one token [B, 1, width] (the UNet's encoder_hidden_states, cross_attention_dim = width).
    mode "timestep": a vector [B, width] the UNet adds to its timestep embedding (class_embed_type="projection").
    null "zeros": the unconditional condition is a zero vector; "learned": a trained null token.
    """

    @register_to_config
    def __init__(self, embed_dim: int, width: int, mode: str = "cross_attention", null: str = "learned"):
        super().__init__()
        if mode not in ("cross_attention", "timestep") or null not in ("zeros", "learned"):
            raise ValueError(f"unknown projection mode {mode!r} or null {null!r}")
        self.proj = nn.Linear(embed_dim, width)
        # the learned null starts at zero: identical to "zeros" at step 0, then trained by the dropped rows
        self.null_token = nn.Parameter(torch.zeros(width), requires_grad=null == "learned")

    def null_condition(self, batch: int) -> torch.Tensor:
        return self._shape(self.null_token.expand(batch, -1))

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, None, :] if self.config.mode == "cross_attention" else x

    def forward(self, embeddings: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(l2_normalize(embeddings).to(self.proj.weight.dtype))
        if drop is not None:  # classifier-free guidance training: some rows see the null condition instead
            x = torch.where(drop[:, None], self.null_token.to(x.dtype).expand_as(x), x)
        return self._shape(x)

    def unet_kwargs(self, condition: torch.Tensor) -> dict:
        """The UNet2DConditionModel keyword arguments that carry `condition`."""
        if self.config.mode == "cross_attention":
            return {"encoder_hidden_states": condition}
        return {"encoder_hidden_states": None, "class_labels": condition}
