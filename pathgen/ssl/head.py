"""The DINO projection head and the multi-crop student/teacher wrapper."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear layer to `out_dim` prototypes (DINO, Caron 2021).

    With `norm_last_layer` the weight-norm magnitude g stays fixed at 1, so the prototypes are unit vectors.
    main_dino.py defaults to True (and its vanilla ViT-S/16 run keeps that default); its help says that not
    normalising "leads to better performance but can make the training unstable", and that the authors
    "typically set this parameter to False with vit_small and True with vit_base".
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (n_layers - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0  # g in w = g * v / |v|
        magnitude.data.fill_(1.0)
        magnitude.requires_grad = not norm_last_layer

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCropModel(nn.Module):
    """Backbone + head over a list of crops of several sizes.

    Consecutive crops of the same resolution are concatenated and go through the backbone together (the globals
    in one group, the locals in another, as DINO's MultiCropWrapper), and the head runs once over all of them.
    Returns logits [n_crops * B, out_dim] in crop order.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: torch.Tensor | list[torch.Tensor], return_features: bool = False):
        """Logits [n_crops * B, out_dim]; with `return_features`, (logits, backbone features [n_crops * B, D])."""
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        sizes = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
        start, feats = 0, []
        for end in ends:
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        features = torch.cat(feats)
        logits = self.head(features)
        return (logits, features) if return_features else logits
