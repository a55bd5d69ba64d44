"""Typed configs: pydantic models read from YAML, with dotted command-line overrides.

    cfg = load_config(SSLConfig, "configs/ssl/tiny_cpu.yaml", ["optim.base_lr=1e-3", "run.max_steps=10"])

Each trainer keeps its own schema beside its code (pathgen.ssl.config, pathgen.diffusion.config); the
sections all of them share (RunConfig) and the loading live here.

Every section forbids unknown keys, so a typo is an error that names the file and the key rather than a
setting that silently does nothing.
"""

import os
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
# sections every trainer shares


class RunConfig(Section):
    out_dir: str = "runs/ssl"
    seed: int = 0
    device: str | None = None  # None: CUDA (this rank's GPU) when present, else the CPU
    # auto: bf16 autocast on GPUs that compute it natively, fp16 + grad scaler on older GPUs, fp32 on the CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_every_steps: int | None = None  # also save every N steps (last.pt and step_<N>.pt)
    save_every_epochs: int = 1
    log_every: int = 10
    max_steps: int | None = None  # stop early (smoke runs); schedules still span the full `epochs`


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


def describe_error(err: ValidationError) -> str:
    """The first validation error as `key.path: problem`."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {first['msg'].lower()} (got {first.get('input')!r})"


def find_file(path: str | Path, *search_dirs: str | Path) -> Path:
    """A file named by a relative path: as given (the working directory), then in each of `search_dirs`, then in
    $PATHGEN_HOME (the Docker image keeps configs/ and pipelines/ there). Returns the path as given when none exists.
    """
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    home = os.environ.get("PATHGEN_HOME")
    for folder in [*search_dirs, *([home] if home else [])]:
        candidate = Path(folder) / path
        if candidate.exists():
            return candidate
    return path


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read `path` (YAML; None for the defaults), apply `key.sub=value` overrides and validate as `cls`.

    A relative `path` is looked up in the working directory, then in $PATHGEN_HOME (see find_file). Override
    values are parsed as YAML, so `optim.base_lr=1e-3`, `data.sources=[a.zarr,b.zarr]` and
    `run.max_steps=null` all do what they look like. Any problem raises a one-line ConfigError.
    """
    data: dict = {}
    where = path if path is not None else "<defaults>"
    if path is not None:
        path = find_file(path)
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
        raise ConfigError(where, describe_error(err)) from None


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write `cfg` as YAML that load_config reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
