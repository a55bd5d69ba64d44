"""Typed configs: pydantic models read from YAML, with dotted command-line overrides.

    cfg = load_config(SSLConfig, "configs/ssl/tiny_cpu.yaml", ["optim.base_lr=1e-3", "run.max_steps=10"])

Every section forbids unknown keys, so a typo is an error that names the file and the key rather than a
setting that silently does nothing.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pathgen.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------------------------------
# DINO self-supervised pretraining (pathgen pretrain ssl)


class DataConfig(Section):
    sources: list[str] = []  # patch stores, folders of stores, globs, tiling manifests or ImageFolder directories
    preset: Literal["natural", "histo"] = "natural"  # augmentation preset (see pathgen.data.augment)
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    n_local: int = 8
    batch_size: int = 64  # per process (per GPU)
    num_workers: int = 8
    # "workers": each DataLoader worker augments its images (CPU). "device": workers only decode, and the
    # multi-crop runs batched on the training device (pathgen.data.device_augment); for GPU servers whose CPU
    # cores cannot keep up. Images must then share one size: stores' patches do; other images are resized and
    # centre-cropped to device_input_size in the workers.
    augment_on: Literal["workers", "device"] = "workers"
    device_input_size: int = 256


class ModelConfig(Section):
    name: str = "vit_small_patch16_224"  # any timm ViT
    img_size: int | None = None  # positional-embedding grid size; defaults to data.global_size
    drop_path_rate: float = 0.1  # student only
    kwargs: dict[str, Any] = {}  # extra timm.create_model kwargs, e.g. {depth: 4, embed_dim: 192, patch_size: 8}
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True


class OptimConfig(Section):
    epochs: int = 100
    base_lr: float = 0.0005  # scaled by total batch size / 256
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per-parameter gradient norm; 0 disables
    freeze_last_layer: int = 1  # epochs during which the head's last layer does not move


class DinoConfig(Section):
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    momentum_teacher: float = 0.996  # cosine-increased to 1 over training
    center_momentum: float = 0.9


class RunConfig(Section):
    out_dir: str = "runs/ssl"
    seed: int = 0
    device: str | None = None  # None: CUDA (this rank's GPU) when present, else the CPU
    save_every_steps: int | None = None  # also save every N steps (last.pt and step_<N>.pt)
    save_every_epochs: int = 1
    log_every: int = 10
    max_steps: int | None = None  # stop early (smoke runs); schedules still span the full `epochs`


class EvalConfig(Section):
    knn_train: list[str] = []  # labelled sources for the periodic kNN check; empty disables it
    knn_test: list[str] = []
    every_epochs: int = 1
    batch_size: int = 64


class SSLConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    dino: DinoConfig = DinoConfig()
    run: RunConfig = RunConfig()
    eval: EvalConfig = EvalConfig()


# ---------------------------------------------------------------------------------------------------------------
# loading


def _set_dotted(data: dict, key: str, value: Any, path: str | Path) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(path, f"{'.'.join(parts[: i + 1])}: is a value, not a section (override {key})")
        node = child
    node[parts[-1]] = value


def _describe(err: ValidationError) -> str:
    """The first validation error as `key.path: problem`."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {first['msg'].lower()} (got {first.get('input')!r})"


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read `path` (YAML; None for the defaults), apply `key.sub=value` overrides and validate as `cls`.

    Override values are parsed as YAML, so `optim.base_lr=1e-3`, `data.sources=[a.zarr,b.zarr]` and
    `run.max_steps=null` all do what they look like. Any problem raises a one-line ConfigError.
    """
    data: dict = {}
    where = path if path is not None else "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(path, "config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            raise ConfigError(path, f"{line}invalid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(data, dict):
            raise ConfigError(path, "top level must be a mapping of sections")
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(where, f"override {override!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML: keep the text as given
        _set_dotted(data, key.strip(), value, where)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(where, _describe(err)) from None


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write `cfg` as YAML that load_config reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
