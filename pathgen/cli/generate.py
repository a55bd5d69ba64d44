"""`pathgen generate`: Gen-SIS self-augmentations (generated views, interpolations) of real patches."""

from pathlib import Path

import typer

from pathgen.cli.app import app


@app.command()
def generate(
    model: Path = typer.Option(..., "--model", "-m", help="A model folder of `pathgen pretrain diffusion` "
                               "(<run>/model)."),
    stores: list[str] = typer.Option(..., "--stores", "-s", help="Source patches: a tiling manifest.csv, stores, "
                                     "folders or globs. Repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: generated.zarr, grid.png, fidelity.json."),
    encoder: Path = typer.Option(None, "--encoder", "-e", help="The encoder the model was conditioned on (default: "
                                 "the one it records); its sha256 must match."),
    views: int = typer.Option(1, "--views", "-k", help="Generated views per source patch."),
    interpolations: int = typer.Option(1, "--interpolations", "-i", help="Interpolations per source patch, each with "
                                       "a random partner patch."),
    alpha_min: float = typer.Option(0.3, "--alpha-min", help="Interpolation weight of the source's embedding: "
                                    "alpha ~ U(alpha_min, alpha_max)."),
    alpha_max: float = typer.Option(0.7, "--alpha-max"),
    sampler: str = typer.Option("dpm++", "--sampler", help="dpm++ (DPM-Solver++ multistep), ddim or ddpm."),
    steps: int = typer.Option(20, "--steps", help="Sampling steps."),
    guidance_scale: float = typer.Option(2.5, "--guidance-scale", "-g", help="Classifier-free guidance scale "
                                         "(1: conditional model alone)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per sampling batch."),
    seed: int = typer.Option(0, "--seed", help="Seeds partners, alphas and each image's noise."),
    resize: bool = typer.Option(False, "--resize", help="Resize patches whose size differs from the model's."),
    max_sources: int = typer.Option(None, "--max-sources", help="Use a seeded random subset of this many source "
                                    "patches (partners are still drawn from all)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: CUDA if present)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the number of images and an estimated time from "
                                 "one timed batch; write nothing."),
) -> None:
    """Pre-generate views and SLERP interpolations of real patches into <out>/generated.zarr.

    A rerun with the same settings gives identical images; a killed run resumes where it stopped.

    Example: pathgen generate --model runs/diffusion/model --stores patches/manifest.csv --out runs/generated
    """
    from pathgen.diffusion.generate import generate as run

    run(model, stores, out, encoder=encoder, views=views, interpolations=interpolations,
        alpha_range=(alpha_min, alpha_max), sampler=sampler, steps=steps, guidance_scale=guidance_scale,
        batch_size=batch_size, seed=seed, resize=resize, max_sources=max_sources, device=device, dry_run=dry_run)
