"""`pathgen pretrain ssl` (DINO) and `pathgen pretrain gensis` (Gen-DINO): one trainer, from a YAML config.

The two commands run the same `pathgen.ssl.trainer.train`; a config's `gensis:` section is what makes it Gen-DINO.
Each command takes only its own kind of config, so that a run's name always says what it trained: `pretrain ssl`
refuses a config with a gensis section (drop it with the override `gensis=null`), and `pretrain gensis` one without.
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


def _pretrain(command: str, config: Path | None, overrides: list[str] | None, out: Path | None, resume: str | None,
              export_only: Path | None) -> None:
    if export_only is not None:
        from pathgen.ssl.export import export_from_checkpoint

        typer.echo(f"encoder -> {export_from_checkpoint(export_only, out)}")
        return

    from pathgen.config import load_config
    from pathgen.errors import ConfigError
    from pathgen.runtime.distributed import cleanup
    from pathgen.ssl.config import SSLConfig
    from pathgen.ssl.trainer import train

    overrides = list(overrides or [])
    if out is not None:
        overrides.append(f"run.out_dir={out}")
    cfg = load_config(SSLConfig, config, overrides)
    where = config if config is not None else "<defaults>"
    if command == "ssl" and cfg.gensis is not None:
        raise ConfigError(where, "has a gensis: section (Gen-DINO): train it with `pathgen pretrain gensis`, or add "
                          "the override gensis=null for plain DINO")
    if command == "gensis" and cfg.gensis is None:
        raise ConfigError(where, "no gensis: section: see configs/gensis/, or train plain DINO with `pathgen "
                          "pretrain ssl`")
    try:
        train(cfg, resume=resume)
    finally:
        cleanup()


@pretrain_app.command("ssl")
def ssl(config: Path = Config, overrides: list[str] = Overrides, out: Path = Out, resume: str = Resume,
        export_only: Path = ExportOnly) -> None:
    """DINO pretraining of a timm ViT on patch stores or image folders.

    Writes <out>/config.yaml, checkpoints/, tensorboard/, log.jsonl, views.png and the teacher backbone as
    encoder.safetensors (+ encoder.json). Multi-GPU / multi-node / CPU-gloo: launch with
    `torchrun --nproc_per_node N -m pathgen pretrain ssl ...`.
    """
    _pretrain("ssl", config, overrides, out, resume, export_only)


@pretrain_app.command("gensis")
def gensis(config: Path = Config, overrides: list[str] = Overrides, out: Path = Out, resume: str = Resume,
           export_only: Path = ExportOnly) -> None:
    """Gen-DINO (Gen-SIS stage 3): DINO with generated views and the disentanglement task.

    The same trainer and outputs as `pretrain ssl`, driven by the config's gensis: section (generated, p_gen,
    lambda_dis, p_interp). Needs patch stores as data.sources and their generated.zarr from `pathgen generate`.
    Example: pathgen pretrain gensis -c configs/gensis/tiny_cpu.yaml data.sources=[tiles/manifest.csv]
    gensis.generated=gen/generated.zarr --out runs/gendino
    """
    _pretrain("gensis", config, overrides, out, resume, export_only)
