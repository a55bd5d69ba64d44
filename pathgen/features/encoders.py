"""The encoders of one extraction run: model, preprocessing, output name and the sha256 that identifies the weights."""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from pathgen.data.augment import EvalTransform
from pathgen.errors import ConfigError, EncoderError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class FeatureEncoder:
    """One frozen encoder: `model` maps the `transform`ed patch batch [B, 3, S, S] to [B, embed_dim]."""

    name: str  # output folder features_<name>/
    spec: str  # as given on the command line
    model: torch.nn.Module
    transform: EvalTransform
    sha256: str
    embed_dim: int

    @property
    def resize_key(self) -> tuple[int, float]:
        """(size, crop_pct): encoders with equal keys share the resized uint8 patch, made once in the workers."""
        return self.transform.size, self.transform.crop_pct

    def resizer(self):
        """The geometric half of `transform`, uint8 in and out: what the DataLoader workers run."""
        from pathgen.data.augment import ResizeCenterCrop

        return ResizeCenterCrop(self.transform.size, self.transform.crop_pct)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The rest of `transform` on a uint8 batch [B, 3, S, S] where it lies (the GPU): float, /255, mean/std.

        Together with `resizer` this is exactly `transform` (EvalTransform does the same ops per image); sending
        uint8 instead of float32 also moves 4x fewer bytes to the device.
        """
        mean = torch.tensor(self.transform.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.transform.std, device=x.device).view(1, 3, 1, 1)
        return (x.float().div_(255) - mean) / std

    def settings(self) -> dict:
        t = self.transform
        return {"size": t.size, "mean": list(t.mean), "std": list(t.std), "crop_pct": t.crop_pct}


def split_name(spec: str) -> tuple[str | None, str]:
    """'NAME=SPEC' -> (NAME, SPEC); a plain spec -> (None, spec). A path that itself holds '=' stays a path."""
    name, sep, rest = spec.partition("=")
    if sep and _NAME.match(name) and not Path(spec).exists():
        return name, rest
    return None, spec


def default_name(spec: str) -> str:
    """timm:vit_small_patch16_224 -> vit_small_patch16_224_random; runs/dino/encoder.safetensors -> dino."""
    from pathgen.eval.encoders import RANDOM_PREFIX, TIMM_PREFIX

    if spec.startswith(TIMM_PREFIX):
        return f"{spec[len(TIMM_PREFIX):]}_random"  # timm: specs are always random init: say so in the name
    if spec.startswith(RANDOM_PREFIX):
        return f"{default_name(spec[len(RANDOM_PREFIX):])}_random"
    path = Path(spec).resolve()
    folder = path if path.is_dir() else path.parent
    return folder.name or "encoder"


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): identifies weights that have no file."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _sha256(spec: str, model: torch.nn.Module) -> str:
    from pathgen.eval.encoders import RANDOM_PREFIX, TIMM_PREFIX, is_timm_folder
    from pathgen.ssl.export import encoder_sha256

    if spec.startswith((TIMM_PREFIX, RANDOM_PREFIX)) or is_timm_folder(Path(spec)):
        return weights_sha256(model)
    return encoder_sha256(spec)  # of the weights file: what `sha256sum encoder.safetensors` prints


def load_feature_encoder(spec: str, img_size: int | None = None, seed: int = 0) -> FeatureEncoder:
    """Resolve `[NAME=]SPEC` (see `pathgen.eval.encoders.resolve_encoder`); EncoderError/ConfigError if impossible."""
    from pathgen.eval.encoders import resolve_encoder

    name, spec = split_name(spec)
    model, transform = resolve_encoder(spec, img_size=img_size, seed=seed)
    if not isinstance(transform, EvalTransform):
        raise EncoderError(spec, f"unsupported preprocessing {type(transform).__name__} (expected an eval transform)")
    model.eval().requires_grad_(False)
    with torch.inference_mode():  # the true output width, whatever the architecture reports
        embed_dim = int(model(torch.zeros(1, 3, transform.size, transform.size)).shape[-1])
    return FeatureEncoder(name or default_name(spec), spec, model, transform, _sha256(spec, model), embed_dim)


def check_names(encoders: list[FeatureEncoder]) -> None:
    seen: dict[str, str] = {}
    for enc in encoders:
        if enc.name in seen:
            raise ConfigError(enc.spec, f"same output name {enc.name!r} as {seen[enc.name]}; name one NAME=SPEC")
        seen[enc.name] = enc.spec
