"""Turn an encoder spec from the command line into (frozen model, its eval preprocessing)."""

from collections.abc import Callable
from pathlib import Path

import torch

from pathgen.errors import ConfigError

TIMM_PREFIX = "timm:"


def _normalize_params(transform: Callable) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of the Normalize step of an eval_transform-style Compose, if it has one."""
    from torchvision.transforms import v2

    for step in getattr(transform, "transforms", []):
        if isinstance(step, v2.Normalize):
            return tuple(step.mean), tuple(step.std)
    return None


def _timm_baseline(spec: str, name: str, img_size: int | None, seed: int) -> tuple[torch.nn.Module, Callable]:
    import timm
    import timm.data

    from pathgen.data.augment import eval_transform

    if not timm.is_model(name):
        raise ConfigError(spec, f"unknown timm model {name!r} (see timm.list_models())")
    # Random init, never a download; seeded (without touching the caller's RNG) so the baseline is repeatable.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:  # ViTs build their position embeddings for img_size
            model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size)
        except TypeError:  # convolutional nets take any input size and have no such argument
            model = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = img_size or cfg["input_size"][-1]
    return model.eval(), eval_transform(size, mean=cfg["mean"], std=cfg["std"])


def resolve_encoder(spec: str, img_size: int | None = None, seed: int = 0) -> tuple[torch.nn.Module, Callable]:
    """(model mapping [B,3,H,W] -> [B,D] in eval mode, PIL -> normalised tensor) for an encoder spec.

    spec is either
      - a path to an encoder exported by `pathgen pretrain ssl` (the .safetensors file or its folder), or
      - "timm:<name>", e.g. "timm:vit_small_patch16_224": that timm architecture at RANDOM initialisation
        (pretrained=False, num_classes=0), the baseline any trained encoder should beat. Nothing is downloaded.
    img_size overrides the input size (ViTs adapt their position embeddings to it).
    """
    if spec.startswith(TIMM_PREFIX):
        return _timm_baseline(spec, spec[len(TIMM_PREFIX) :], img_size, seed)
    path = Path(spec)
    if not path.exists():
        raise ConfigError(spec, "no such encoder file or folder (give an exported encoder or timm:<model name>)")
    from pathgen.ssl.export import load_encoder

    model, transform = load_encoder(path)
    if img_size is not None:
        from pathgen.data.augment import eval_transform

        norm = _normalize_params(transform)
        if norm is None:
            raise ConfigError(spec, "cannot change the input size of this encoder's preprocessing")
        transform = eval_transform(img_size, *norm)
    return model, transform
