"""Turn an encoder spec from the command line into (frozen model, its eval preprocessing)."""

from collections.abc import Callable
from pathlib import Path

import torch

from pathgen.errors import ConfigError

TIMM_PREFIX = "timm:"
RANDOM_PREFIX = "random:"


def _normalize_params(transform: Callable) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of an eval_transform's normalisation; None for any other preprocessing."""
    from pathgen.data.augment import EvalTransform

    if isinstance(transform, EvalTransform):
        return tuple(transform.mean), tuple(transform.std)
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


def _timm_folder(spec: str, path: Path, img_size: int | None) -> tuple[torch.nn.Module, Callable]:
    """A local timm / Hugging Face hub folder (config.json + model.safetensors or pytorch_model.bin)."""
    import timm
    import timm.data

    from pathgen.data.augment import eval_transform
    from pathgen.errors import EncoderError

    kwargs = {"img_size": img_size} if img_size is not None else {}
    try:  # timm reads the weights with weights_only=True (or safetensors): nothing is unpickled
        model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0, **kwargs)
    except Exception as err:  # noqa: BLE001 - timm raises many types for a bad folder
        first = str(err).splitlines()[0] if str(err) else ""
        raise EncoderError(path, f"cannot load timm folder ({type(err).__name__}: {first})") from None
    cfg = timm.data.resolve_data_config({}, model=model)
    size = img_size or cfg["input_size"][-1]
    return model.eval(), eval_transform(size, mean=cfg["mean"], std=cfg["std"], crop_pct=cfg.get("crop_pct", 1.0))


def is_timm_folder(path: Path) -> bool:
    """A timm/HF-style model folder (config.json) rather than a pathgen export (encoder.json)."""
    from pathgen.ssl.export import META

    return path.is_dir() and (path / "config.json").is_file() and not (path / META).is_file()


def _random_like(spec: str, path: Path, seed: int) -> torch.nn.Module:
    """The architecture of an exported encoder (its encoder.json) at random init: same model, no training."""
    import json

    from pathgen.ssl.export import META, WEIGHTS, create_backbone

    meta_path = (path if path.is_dir() else path.parent) / META
    if not meta_path.is_file():
        raise ConfigError(spec, f"no {META} next to the encoder (expected an exported encoder or its {WEIGHTS})")
    meta = json.loads(meta_path.read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_backbone(meta["model_name"], meta["img_size"], meta["model_kwargs"]).eval()


def resolve_encoder(spec: str, img_size: int | None = None, seed: int = 0) -> tuple[torch.nn.Module, Callable]:
    """(model mapping [B,3,H,W] -> [B,D] in eval mode, PIL -> normalised tensor) for an encoder spec.

    spec is either
      - a path to an encoder exported by `pathgen pretrain ssl` (the .safetensors file or its folder), or
      - "random:<path>": the same architecture and preprocessing as that exported encoder, at RANDOM init
        (seeded): the fair baseline for it, since only the training differs;
      - "timm:<name>", e.g. "timm:vit_small_patch16_224": that timm architecture at RANDOM initialisation
        (pretrained=False, num_classes=0). Nothing is ever downloaded;
      - a local timm / Hugging Face hub model folder (config.json + weights), loaded with timm's `local-dir:`
        source; its preprocessing comes from timm's resolve_data_config.
    img_size overrides the input size (ViTs adapt their position embeddings to it).
    """
    if spec.startswith(TIMM_PREFIX):
        return _timm_baseline(spec, spec[len(TIMM_PREFIX) :], img_size, seed)
    random_init = spec.startswith(RANDOM_PREFIX)
    path = Path(spec[len(RANDOM_PREFIX) :] if random_init else spec)
    if not path.exists():
        raise ConfigError(spec, "no such encoder file or folder (give an exported encoder or timm:<model name>)")
    if is_timm_folder(path) and not random_init:
        return _timm_folder(spec, path, img_size)
    from pathgen.ssl.export import load_encoder

    model, transform = load_encoder(path)
    if random_init:
        model = _random_like(spec, path, seed)
    if img_size is not None:
        from pathgen.data.augment import eval_transform

        norm = _normalize_params(transform)
        if norm is None:
            raise ConfigError(spec, "cannot change the input size of this encoder's preprocessing")
        transform = eval_transform(img_size, *norm)
    return model, transform
