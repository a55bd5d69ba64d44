"""`pathgen extract-features` and `pathgen slide-embed`: patch stores -> per-patch features -> slide embeddings."""

from pathlib import Path

import typer

from pathgen.cli.app import app


@app.command("extract-features")
def extract_features(
    encoder: list[str] = typer.Option(
        ..., "--encoder", "-e", show_default=False,
        help="Repeatable [NAME=]SPEC: an encoder exported by `pathgen pretrain ssl` (file or folder), "
        "random:<that path>, timm:<name> (random init, nothing downloaded) or a local timm/HF model folder. "
        "NAME (default: the export's folder name) names the output folder features_<NAME>/.",
    ),
    stores: list[str] = typer.Option(
        ..., "--stores", "-s", show_default=False,
        help="Patch stores: a tiling manifest.csv, store paths, folders or globs. Repeatable.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: features_<NAME>/<slide>.h5 and extraction.csv."),
    from_slides: Path | None = typer.Option(
        None, "--from-slides", help="Read the pixels from the slides under this folder (for --coords-only stores)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Patches per forward pass."),
    workers: int = typer.Option(4, "--workers", "-j", help="DataLoader worker processes reading and decoding."),
    fp16: bool = typer.Option(False, "--fp16", help="Store features as float16 instead of float32."),
    export_pt: bool = typer.Option(False, "--export-pt", help="Also write CLAM's pt_files/<slide>.pt bags."),
    img_size: int | None = typer.Option(None, "--img-size", help="Encoder input size (default: its own)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: CUDA if present)."),
    seed: int = typer.Option(0, "--seed", help="Seed of random-init (timm:, random:) encoders."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute slides whose feature files are current."),
    reader: str | None = typer.Option(
        None, "--reader", help="Slide reader for --from-slides (default: the one each store was tiled with)."
    ),
) -> None:
    """Per-patch features of every slide's store, for one or several encoders in a single pass.

    Each patch is read and decoded once and fed to every encoder. Writes TRIDENT's layout,
    <out>/features_<NAME>/<slide>.h5 (features, coords with the store's attributes, tissue_fraction), and
    <out>/extraction.csv with one row per slide and encoder. A rerun skips slides whose file matches the store,
    encoder sha256 and settings. Multi-GPU: `torchrun --nproc_per_node N -m pathgen extract-features ...`.

    Exits with status 1 if any slide or encoder failed; the reasons are in the manifest.

    Example: pathgen extract-features -e dino=runs/ssl -e timm:vit_small_patch16_224 -s patches/manifest.csv -o feats
    """
    from pathgen.features.extract import extract_features as run
    from pathgen.features.extract import summarize
    from pathgen.runtime.distributed import cleanup

    try:
        result = run(encoder, stores, out, from_slides=from_slides, batch_size=batch_size, workers=workers,
                     fp16=fp16, export_pt=export_pt, img_size=img_size, device=device, seed=seed,
                     overwrite=overwrite, reader=reader)
    finally:
        cleanup()
    typer.echo(summarize(result), nl=False)
    typer.echo(f"manifest: {result.manifest}")
    if result.failed:
        typer.echo(f"error: {len(result.failed)} slide/encoder pair(s) failed, see {result.manifest}", err=True)
        raise typer.Exit(1)


@app.command("slide-embed")
def slide_embed(
    features: Path = typer.Option(..., "--features", "-f", help="A features_<NAME>/ folder of <slide>.h5 files."),
    out: Path = typer.Option(..., "--out", "-o", help="Output HDF5 file: slide_ids and embeddings [S, D]."),
    mil_model: Path | None = typer.Option(
        None, "--mil-model", help="Pool with this trained MIL model's attention (a `pathgen mil train` output "
        "folder, its fold 0, or one fold's model.safetensors) instead of the mean."
    ),
    table: Path | None = typer.Option(None, "--table", help="Also write the embeddings as .csv or .parquet."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: CUDA if present)."),
) -> None:
    """One embedding per slide: the mean of its patch features, or a MIL model's attention pooling.

    Example: pathgen slide-embed --features feats/features_dino --out slides.h5 --table slides.csv
    """
    from pathgen.features.embed import slide_embed as run

    path = run(features, out, mil_model=mil_model, table=table, device=device)
    typer.echo(f"wrote {path}" + (f" and {table}" if table else ""))
