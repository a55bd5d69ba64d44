"""`pathgen pretrain ssl` (DINO), `pathgen pretrain gensis` (Gen-DINO) and `pathgen pretrain diffusion` (stage 2).

`ssl` and `gensis` run the same `pathgen.ssl.trainer.train`; a config's `gensis:` section is what makes it Gen-DINO.
Each takes only its own kind of config, so that a run's name always says what it trained: `pretrain ssl` refuses a
config with a gensis section (drop it with the override `gensis=null`), and `pretrain gensis` one without.
"""

from pathlib import Path

import typer

from pathgen.cli.app import pretrain_app

Config = typer.Option(None, "--config", "-c", help="YAML config, e.g. configs/ssl/tiny_cpu.yaml.")
Overrides = typer.Argument(
    None, help="Dotted overrides KEY=VALUE, e.g. optim.base_lr=1e-3 run.max_steps=50 data.num_workers=0."
)
Out = typer.Option(None, "--out", "-o", help="Output directory (same as run.out_dir=...).")
Resume = typer.Option(
    None, "--resume", help="Checkpoint to continue from, or 'auto' for <out>/checkpoints/last.pt if present."
)
ExportOnly = typer.Option(
    None, "--export-only", help="Only re-export the teacher encoder of this checkpoint, then exit."
)


def _train(train, schema, config: Path | None, overrides: list[str] | None, out: Path | None, resume: str | None,
           check=None) -> None:
    """Load `schema` from the YAML + overrides (--out is run.out_dir), `check` it, run `train`, leave torchrun."""
    from pathgen.config import load_config
    from pathgen.runtime.distributed import cleanup

    overrides = list(overrides or [])
    if out is not None:
        overrides.append(f"run.out_dir={out}")
    cfg = load_config(schema, config, overrides)
    if check is not None:
        check(cfg, config if config is not None else "<defaults>")
    try:
        train(cfg, resume=resume)
    finally:
        cleanup()


def _pretrain_dino(command: str, config: Path | None, overrides: list[str] | None, out: Path | None,
                   resume: str | None, export_only: Path | None) -> None:
    if export_only is not None:
        from pathgen.ssl.export import export_from_checkpoint

        typer.echo(f"encoder -> {export_from_checkpoint(export_only, out)}")
        return

    from pathgen.errors import ConfigError
    from pathgen.ssl.config import SSLConfig
    from pathgen.ssl.trainer import train

    def check(cfg, where) -> None:
        if command == "ssl" and cfg.gensis is not None:
            raise ConfigError(where, "has a gensis: section (Gen-DINO): train it with `pathgen pretrain gensis`, "
                              "or add the override gensis=null for plain DINO")
        if command == "gensis" and cfg.gensis is None:
            raise ConfigError(where, "no gensis: section: see configs/gensis/, or train plain DINO with `pathgen "
                              "pretrain ssl`")

    _train(train, SSLConfig, config, overrides, out, resume, check)


@pretrain_app.command("ssl")
def ssl(config: Path = Config, overrides: list[str] = Overrides, out: Path = Out, resume: str = Resume,
        export_only: Path = ExportOnly) -> None:
    """DINO pretraining of a timm ViT on patch stores or image folders.

    Writes <out>/config.yaml, checkpoints/, tensorboard/, log.jsonl, views.png and the teacher backbone as
    encoder.safetensors (+ encoder.json). Multi-GPU / multi-node / CPU-gloo: launch with
    `torchrun --nproc_per_node N -m pathgen pretrain ssl ...`.
    """
    _pretrain_dino("ssl", config, overrides, out, resume, export_only)


@pretrain_app.command("gensis")
def gensis(config: Path = Config, overrides: list[str] = Overrides, out: Path = Out, resume: str = Resume,
           export_only: Path = ExportOnly) -> None:
    """Gen-DINO (Gen-SIS stage 3): DINO with generated views and the disentanglement task.

    The same trainer and outputs as `pretrain ssl`, driven by the config's gensis: section (generated, p_gen,
    lambda_dis, p_interp). Needs patch stores as data.sources and their generated.zarr from `pathgen generate`.
    Example: pathgen pretrain gensis -c configs/gensis/tiny_cpu.yaml data.sources=[tiles/manifest.csv]
    gensis.generated=gen/generated.zarr --out runs/gendino
    """
    _pretrain_dino("gensis", config, overrides, out, resume, export_only)


@pretrain_app.command("diffusion")
def diffusion(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config, e.g. configs/diffusion/tiny_cpu.yaml."),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides KEY=VALUE, e.g. data.sources=[patches/manifest.csv] data.encoder=runs/dino."
    ),
    out: Path = Out,
    resume: str = Resume,
) -> None:
    """Gen-SIS stage 2: a diffusion model of patches conditioned on the frozen SSL encoder's embeddings.

    Writes <out>/config.yaml, cache/ (embeddings, latents), checkpoints/, tensorboard/, log.jsonl, samples/ and
    model/ (a diffusers folder: EmbeddingConditionedPipeline.from_pretrained). Multi-GPU / CPU-gloo: launch with
    `torchrun --nproc_per_node N -m pathgen pretrain diffusion ...`.
    """
    from pathgen.diffusion.config import DiffusionConfig
    from pathgen.diffusion.train import train_diffusion

    _train(train_diffusion, DiffusionConfig, config, overrides, out, resume)
