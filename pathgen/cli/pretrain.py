"""`pathgen pretrain ssl` (DINO) and `pathgen pretrain diffusion` (Gen-SIS stage 2), each from a YAML config."""

from pathlib import Path

import typer

from pathgen.cli.app import pretrain_app


def _train(train, schema, config: Path | None, overrides: list[str] | None, out: Path | None,
           resume: str | None) -> None:
    """Load `schema` from the YAML + overrides (--out is run.out_dir) and run `train`, leaving torchrun cleanly."""
    from pathgen.config import load_config
    from pathgen.runtime.distributed import cleanup

    overrides = list(overrides or [])
    if out is not None:
        overrides.append(f"run.out_dir={out}")
    cfg = load_config(schema, config, overrides)
    try:
        train(cfg, resume=resume)
    finally:
        cleanup()


@pretrain_app.command("ssl")
def ssl(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config, e.g. configs/ssl/tiny_cpu.yaml."),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides KEY=VALUE, e.g. optim.base_lr=1e-3 run.max_steps=50 data.num_workers=0."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (same as run.out_dir=...)."),
    resume: str = typer.Option(
        None, "--resume", help="Checkpoint to continue from, or 'auto' for <out>/checkpoints/last.pt if present."
    ),
    export_only: Path = typer.Option(
        None, "--export-only", help="Only re-export the teacher encoder of this checkpoint, then exit."
    ),
) -> None:
    """DINO pretraining of a timm ViT on patch stores or image folders.

    Writes <out>/config.yaml, checkpoints/, tensorboard/ and the teacher backbone as encoder.safetensors
    (+ encoder.json). Multi-GPU / multi-node / CPU-gloo: launch with
    `torchrun --nproc_per_node N -m pathgen pretrain ssl ...`.
    """
    if export_only is not None:
        from pathgen.ssl.export import export_from_checkpoint

        typer.echo(f"encoder -> {export_from_checkpoint(export_only, out)}")
        return

    from pathgen.ssl.config import SSLConfig
    from pathgen.ssl.trainer import train

    _train(train, SSLConfig, config, overrides, out, resume)


@pretrain_app.command("diffusion")
def diffusion(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config, e.g. configs/diffusion/tiny_cpu.yaml."),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides KEY=VALUE, e.g. data.sources=[patches/manifest.csv] data.encoder=runs/dino."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (same as run.out_dir=...)."),
    resume: str = typer.Option(
        None, "--resume", help="Checkpoint to continue from, or 'auto' for <out>/checkpoints/last.pt if present."
    ),
) -> None:
    """Gen-SIS stage 2: a diffusion model of patches conditioned on the frozen SSL encoder's embeddings.

    Writes <out>/config.yaml, cache/ (embeddings, latents), checkpoints/, tensorboard/, log.jsonl, samples/ and
    model/ (a diffusers folder: EmbeddingConditionedPipeline.from_pretrained). Multi-GPU / CPU-gloo: launch with
    `torchrun --nproc_per_node N -m pathgen pretrain diffusion ...`.
    """
    from pathgen.diffusion.config import DiffusionConfig
    from pathgen.diffusion.train import train_diffusion

    _train(train_diffusion, DiffusionConfig, config, overrides, out, resume)
