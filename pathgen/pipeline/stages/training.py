"""Training stages: DINO, Gen-DINO and the diffusion model, each from its config file plus overrides; generation."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from pathgen.config import Section, load_config
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


def _run_trainer(train, ctx: StepContext) -> None:
    """Train from the step's resolved config, resuming its own last checkpoint; leave torchrun's group cleanly."""
    from pathgen.runtime.distributed import cleanup

    try:
        train(ctx.config, resume="auto")
    finally:
        cleanup()


def run_ssl(ctx: StepContext) -> None:
    from pathgen.ssl.trainer import train

    _run_trainer(train, ctx)


def diffusion_config(path: Path | None, overrides: list[str], out: Path) -> BaseModel:
    from pathgen.diffusion.config import DiffusionConfig

    return load_config(DiffusionConfig, path, [*overrides, f"run.out_dir={out}"])


def run_diffusion(ctx: StepContext) -> None:
    from pathgen.diffusion.train import train_diffusion

    _run_trainer(train_diffusion, ctx)


class GenerateParams(Section):
    """`pathgen generate`: views and interpolations of real patches; its chunked output resumes in place."""

    model: str  # a pretrain-diffusion step's model folder
    stores: list[str]  # stores, folders, globs or a tiling manifest
    encoder: str | None = None  # default: the encoder the model records
    views: int = 1
    interpolations: int = 1
    alpha_min: float = 0.3
    alpha_max: float = 0.7
    sampler: str = "dpm++"
    steps: int = 20
    guidance_scale: float = 2.5
    batch_size: int = 32
    seed: int = 0
    max_sources: int | None = None  # a seeded random subset of the source patches


def run_generate(ctx: StepContext) -> None:
    from pathgen.diffusion.generate import generate

    p = ctx.params
    generate(p.model, p.stores, ctx.dir, encoder=p.encoder, views=p.views, interpolations=p.interpolations,
             alpha_range=(p.alpha_min, p.alpha_max), sampler=p.sampler, steps=p.steps,
             guidance_scale=p.guidance_scale, batch_size=p.batch_size, seed=p.seed, max_sources=p.max_sources)


STAGES = {
    "pretrain-ssl": Stage(NoParams, {"encoder": "encoder.safetensors", "dir": "."}, run_ssl, config=ssl_config,
                          cli=("pretrain", "ssl")),
    "pretrain-gensis": Stage(NoParams, {"encoder": "encoder.safetensors", "dir": "."}, run_ssl, config=gensis_config,
                             cli=("pretrain", "gensis")),
    "pretrain-diffusion": Stage(NoParams, {"model": "model", "dir": "."}, run_diffusion, config=diffusion_config,
                                cli=("pretrain", "diffusion")),
    "generate": Stage(GenerateParams, {"generated": "generated.zarr", "grid": "grid.png", "fidelity": "fidelity.json"},
                      run_generate, inputs=("model", "stores", "encoder")),
}
