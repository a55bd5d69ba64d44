"""`pathgen pack`: an ImageFolder (or a path,label CSV of images) into patch stores, the tiler's format."""

from pathlib import Path

import typer

from pathgen.cli.app import app
from pathgen.store.codecs import DEFAULT_CODEC, DEFAULT_QUALITY
from pathgen.store.pack import DEFAULT_PER_STORE


@app.command()
def pack(
    source: Path = typer.Argument(
        ..., help="An ImageFolder root (one sub-folder of images per class) or a CSV with columns path,label "
        "(paths relative to the CSV).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: part-NNNNN.zarr stores, manifest.csv, "
                             "files/, unreadable.csv, summary.txt."),
    size: int = typer.Option(256, "--size", help="Stored side: the shorter side is resized to it, the centre kept."),
    per_store: int = typer.Option(DEFAULT_PER_STORE, "--per-store", help="Images per store."),
    codec: str = typer.Option(DEFAULT_CODEC, "--codec", help="jpeg, webp or lossless (blosc-lz4)."),
    quality: int = typer.Option(DEFAULT_QUALITY, "--quality", help="JPEG/WebP quality, 1-100."),
    workers: int = typer.Option(1, "--workers", "-j", help="Worker processes, one store each at a time; 0: this "
                                "process only."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Repack stores that are already up to date."),
) -> None:  # fmt: skip
    """Pack images into patch stores that every training stage reads like tiled slides.

    Images are listed as torchvision's ImageFolder lists them, resized and centre-cropped to SIZE x SIZE and
    stored with their class labels, PER_STORE images a store. An unreadable image is reported, recorded in
    unreadable.csv and skipped. A rerun skips stores already packed from the same files and settings.
    """
    from pathgen.store.manifest import summary_path
    from pathgen.store.pack import pack_images

    manifest = pack_images(source, out, size=size, per_store=per_store, codec=codec, quality=quality,
                           workers=workers, overwrite=overwrite)
    typer.echo(summary_path(manifest).read_text(encoding="utf-8"), nl=False)
    typer.echo(f"manifest: {manifest}")
