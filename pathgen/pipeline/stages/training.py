"""Training stages: DINO, Gen-DINO (and the diffusion model), each from its config file plus overrides."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from pathgen.config import load_config
from pathgen.pipeline.stages import NoParams, Stage, StepContext


def ssl_config(path: Path | None, overrides: list[str], out: Path) -> BaseModel:
    from pathgen.ssl.config import SSLConfig

    return load_config(SSLConfig, path, [*overrides, f"run.out_dir={out}"])


def gensis_config(path: Path | None, overrides: list[str], out: Path) -> BaseModel:
    from pathgen.errors import ConfigError

    cfg = ssl_config(path, overrides, out)
    if cfg.gensis is None:
        raise ConfigError(path, "a pretrain-gensis step needs a config with a gensis: section (configs/gensis/)")
    return cfg


def run_ssl(ctx: StepContext) -> None:
    from pathgen.runtime.distributed import cleanup
    from pathgen.ssl.trainer import train

    try:
        train(ctx.config, resume="auto")
    finally:
        cleanup()


STAGES = {
    "pretrain-ssl": Stage(NoParams, {"encoder": "encoder.safetensors", "dir": "."}, run_ssl, config=ssl_config,
                          cli=("pretrain", "ssl")),
    "pretrain-gensis": Stage(NoParams, {"encoder": "encoder.safetensors", "dir": "."}, run_ssl, config=gensis_config,
                             cli=("pretrain", "gensis")),
}
