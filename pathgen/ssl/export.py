"""Export the teacher backbone as a timm-loadable safetensors file, and load it back as an encoder.

    <dir>/encoder.safetensors   the backbone's state dict under timm's own key names
    <dir>/encoder.json          model name + timm kwargs, img_size, mean/std, embed_dim, pathgen version, config

The weights load in plain timm with no download:

    timm.create_model(name, pretrained=True, num_classes=0, **kwargs,
                      pretrained_cfg_overlay=dict(file="<dir>/encoder.safetensors"))
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from pathgen.errors import EncoderError

WEIGHTS, META = "encoder.safetensors", "encoder.json"


def export_encoder(
    backbone: nn.Module, out_dir: str | Path, model_name: str, model_kwargs: dict[str, Any], img_size: int,
    mean: tuple[float, ...], std: tuple[float, ...], config: dict | None = None,
) -> Path:
    """Write encoder.safetensors + encoder.json into `out_dir`; returns the .safetensors path."""
    from pathgen import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS
    tmp = weights.with_name(f".{WEIGHTS}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    meta = {
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "img_size": img_size,
        "mean": list(mean),
        "std": list(std),
        "embed_dim": int(getattr(backbone, "num_features", 0)),
        "pathgen_version": __version__,
        "config": config,
    }
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    return weights


def encoder_sha256(path: str | Path) -> str:
    """sha256 of an exported encoder's weights file (or of <folder>/encoder.safetensors): its identity.

    Stages that depend on an encoder (its embeddings cached for diffusion, generated views, features) record this,
    so that pairing their outputs with another encoder is an error, not a silent mismatch.
    """
    import hashlib

    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise EncoderError(weights, "encoder weights not found")
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_backbone(name: str, img_size: int, kwargs: dict[str, Any], drop_path_rate: float = 0.0,
                    weights: str | Path | None = None) -> nn.Module:
    """The one place a timm ViT is built: headless, any input size; from `weights` (safetensors) if given."""
    import timm

    extra = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))) if weights else {}
    return timm.create_model(
        name, num_classes=0, dynamic_img_size=True, img_size=img_size, drop_path_rate=drop_path_rate,
        **kwargs, **extra,
    )


def load_encoder(path: str | Path) -> tuple[nn.Module, Callable]:
    """(model in eval mode mapping [B,3,H,W] -> [B,D], its eval preprocessing PIL -> normalised tensor)."""
    from pathgen.data.augment import eval_transform

    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    meta_path = weights.with_name(META)
    if not weights.is_file():
        raise EncoderError(weights, "encoder weights not found")
    if not meta_path.is_file():
        raise EncoderError(meta_path, "encoder metadata not found (export writes it next to the weights)")
    try:
        meta = json.loads(meta_path.read_text())
        model = create_backbone(meta["model_name"], meta["img_size"], meta["model_kwargs"], weights=weights)
    except (json.JSONDecodeError, KeyError, RuntimeError) as err:
        raise EncoderError(weights, f"cannot load encoder ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    model.eval()
    return model, eval_transform(meta["img_size"], mean=tuple(meta["mean"]), std=tuple(meta["std"]))


@torch.no_grad()
def export_from_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    """Re-export the teacher backbone of a training checkpoint (defaults next to its run directory)."""
    from pathgen.runtime.checkpoint import load_checkpoint
    from pathgen.ssl.config import SSLConfig

    state = load_checkpoint(checkpoint)
    cfg = SSLConfig.model_validate(state["config"])
    img_size = cfg.model.img_size or cfg.data.global_size
    backbone = create_backbone(cfg.model.name, img_size, cfg.model.kwargs)
    prefix = "backbone."
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state["teacher"].items() if k.startswith(prefix)})
    out_dir = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent.parent
    return export_encoder(backbone, out_dir, cfg.model.name, cfg.model.kwargs, img_size,
                          tuple(state["mean"]), tuple(state["std"]), config=state["config"])
