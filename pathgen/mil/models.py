"""Multi-class MIL aggregators over one bag of patch features [N, D], and their safetensors files.

Every model maps a bag to (class logits [C], attention [N] summing to 1) and exposes `embed(bag) -> (slide
embedding, attention)`. torchmil has ABMIL/TransMIL, but its models end in a single binary logit and its layers
bring pandas, tensordict and torchmetrics along; each model here is a few dozen lines.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pathgen.errors import CheckpointError
from pathgen.mil.config import MILModelConfig

META_KEY = "pathgen_mil"


class ABMIL(nn.Module):
    """Gated-attention MIL (Ilse et al., 2018): a_i ∝ exp(w^T (tanh(V h_i) ⊙ sigm(U h_i))), z = Σ a_i h_i."""

    def __init__(self, in_dim: int, n_classes: int, hidden_dim: int = 256, attn_dim: int = 128, dropout: float = 0.25):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden_dim, attn_dim)
        self.attn_u = nn.Linear(hidden_dim, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.head = nn.Linear(hidden_dim, n_classes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.project(x)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        attention = torch.softmax(scores.float(), dim=0)
        return attention.to(h.dtype) @ h, attention

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, attention = self.embed(x)
        return self.head(z), attention


class MeanPool(nn.Module):
    """The baseline: a linear classifier on the mean patch feature (every patch weighs 1/N)."""

    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_dim, n_classes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(0), torch.full((len(x),), 1.0 / len(x), device=x.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, attention = self.embed(x)
        return self.head(self.dropout(z)), attention


class _SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual, through fused scaled_dot_product_attention."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        attention = None
        if cls_attention:  # only the class token's row: O(N), never the N x N matrix
            logits = (q[:, :, :1] @ k.transpose(-2, -1)).float() / math.sqrt(d // self.n_heads)
            attention = torch.softmax(logits, dim=-1).mean(1)[0, 0]  # mean over heads -> [n]
        return x + self.out(y.transpose(1, 2).reshape(b, n, d)), attention


class _PPEG(nn.Module):
    """TransMIL's pyramid position encoding: depthwise 7/5/3 convolutions over the tokens laid out on a square."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    """TransMIL (Shao et al., 2021): class token, attention layer, PPEG, attention layer, class-token readout.

    One difference: attention is exact (fused SDPA kernels) where the paper approximates it (Nyström).
    The bag is padded to a square by repeating its first patches, as the paper does; attention maps drop the pad.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden_dim: int = 256, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        self.layer1 = _SelfAttention(hidden_dim, n_heads, dropout)
        self.ppeg = _PPEG(hidden_dim)
        self.layer2 = _SelfAttention(hidden_dim, n_heads, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, n_classes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        h = self.project(x)
        side = math.ceil(math.sqrt(n))
        pad = side * side - n
        h = torch.cat([h, h[torch.arange(pad, device=h.device) % n]]) if pad else h
        t = torch.cat([self.cls_token.to(h.dtype), h[None]], dim=1)
        t, _ = self.layer1(t)
        t = self.ppeg(t, side)
        t, attention = self.layer2(t, cls_attention=True)
        attention = attention[1 : n + 1]
        return self.norm(t[0, 0]), attention / attention.sum()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, attention = self.embed(x)
        return self.head(z), attention


def build_model(cfg: MILModelConfig, in_dim: int, n_classes: int) -> nn.Module:
    if cfg.name == "abmil":
        return ABMIL(in_dim, n_classes, cfg.hidden_dim, cfg.attn_dim, cfg.dropout)
    if cfg.name == "transmil":
        return TransMIL(in_dim, n_classes, cfg.hidden_dim, cfg.n_heads, cfg.dropout)
    return MeanPool(in_dim, n_classes, cfg.dropout)


def save_model(model: nn.Module, path: str | Path, meta: dict) -> Path:
    """Weights as safetensors with `meta` (model config, in_dim, classes, ...) as JSON in the file's metadata."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp),
              metadata={META_KEY: json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its meta) from a file `save_model` wrote; CheckpointError otherwise."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "MIL model not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
        model = build_model(MILModelConfig.model_validate(meta["model"]), meta["in_dim"], len(meta["classes"]))
        model.load_state_dict(load_file(str(path)))
    except Exception as err:  # noqa: BLE001 - a foreign or damaged file: one line
        raise CheckpointError(path, f"not a pathgen MIL model ({type(err).__name__}: {err})".splitlines()[0]) from None
    return model.eval(), meta
