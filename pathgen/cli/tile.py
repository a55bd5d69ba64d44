"""`pathgen tile`: whole-slide images into one patch store per slide, plus manifest, summary and QC images."""

from pathlib import Path

import typer

from pathgen.cli.app import app
from pathgen.store.codecs import DEFAULT_CODEC, DEFAULT_QUALITY


@app.command()
def tile(
    slides: list[Path] = typer.Argument(
        ...,
        help="Slide files, folders (searched recursively) or CSV lists (column 'slide' or 'path', "
        "optional 'mpp' column overriding the slide's metadata).",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the stores, manifest.csv, summary.txt, qc/."),
    mpp: float | None = typer.Option(
        None, "--mpp", help="Target resolution in microns per pixel (0.5 ~ 20x, 0.25 ~ 40x); default 0.5."
    ),
    magnification: float | None = typer.Option(
        None,
        "--magnification",
        help="Target magnification instead of --mpp, e.g. 20: each slide is scaled by its level-0 magnification "
        "(objective power, else 10 / mpp), so slides without an mpp but with a power are tiled right.",
    ),
    patch_size: int = typer.Option(256, "--patch-size", help="Patch side in pixels at the target resolution."),
    overlap: int = typer.Option(
        0, "--overlap", help="Pixels (at the target resolution) neighbouring patches share, as in TRIDENT."
    ),
    roi: Path | None = typer.Option(
        None,
        "--roi",
        help="Folder of GeoJSON annotations (QuPath export), <slide>.geojson each: patches only inside the "
        "annotated regions, labelled with their class names; 'Tissue' features replace the detected tissue "
        "(qc/<slide>.geojson is such a file).",
    ),
    fmt: str = typer.Option("zarr", "--format", help="Store format: zarr (v3, sharded) or h5 (CLAM/TRIDENT layout)."),
    workers: int = typer.Option(
        1,
        "--workers",
        "-j",
        help="Worker processes, shared across and within slides; a crashing worker fails only its slide. "
        "0: everything in this process (debugging).",
    ),
    shard: str = typer.Option(
        "0/1",
        "--shard",
        help="Tile only shard I of N (0-based), e.g. $SLURM_ARRAY_TASK_ID/8: slides are assigned by a hash of "
        "their name, so adding slides moves no other; then `pathgen manifest merge OUT`.",
    ),
    tissue_threshold: float = typer.Option(
        0.5, "--tissue-threshold", help="Keep a patch when at least this fraction of it is tissue."
    ),
    coords_only: bool = typer.Option(False, "--coords-only", help="Store coordinates and tissue fractions, no pixels."),
    reader: str = typer.Option(
        "auto",
        "--reader",
        help="auto: decode SVS / tiled TIFF tiles with tifffile (same pixels as OpenSlide, faster), OpenSlide region "
        "reads for other formats or when a slide's tiles are not supported (noted in the store attrs); tifffile: "
        "that fast path or fail; openslide: OpenSlide, one read per patch; tiatoolbox (if installed).",
    ),
    codec: str = typer.Option(
        DEFAULT_CODEC, "--codec", help="How patches are stored: jpeg, webp or lossless (blosc-lz4, ~9x larger)."
    ),
    quality: int = typer.Option(DEFAULT_QUALITY, "--quality", help="JPEG/WebP quality, 1-100."),
    slide_mpp: float | None = typer.Option(
        None,
        "--slide-mpp",
        help="Level-0 mpp for slides that record neither an mpp nor an objective power (a CSV 'mpp' column "
        "overrides what a slide records).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Re-tile slides that already have a finished store."),
) -> None:
    """Tile whole-slide images into patch stores at a target resolution.

    Tissue is found on a thumbnail; patches with enough tissue are read row-major from the best pyramid level.

    Writes <out>/<slide>.zarr (or .h5), <out>/qc/<slide>.png (QC picture), <out>/qc/<slide>.geojson (tissue
    contours, for QuPath), manifest.csv and summary.txt.

    Re-running skips slides already tiled with the same parameters and retries failed ones.

    Exits with status 1 if any slide failed; the reasons are in the manifest.
    """
    from pathgen.slide.tiler import parse_shard, summary_path, tile_cohort
    from pathgen.store.manifest import read_manifest

    manifest = tile_cohort(
        slides,
        out,
        mpp=mpp,
        magnification=magnification,
        patch_size=patch_size,
        overlap=overlap,
        fmt=fmt,
        workers=workers,
        shard=parse_shard(shard),
        tissue_threshold=tissue_threshold,
        coords_only=coords_only,
        reader=reader,
        codec=codec,
        quality=quality,
        slide_mpp=slide_mpp,
        roi=roi,
        overwrite=overwrite,
    )
    typer.echo(summary_path(manifest).read_text(encoding="utf-8"), nl=False)
    typer.echo(f"manifest: {manifest}")
    failed = sum(row.status == "failed" for row in read_manifest(manifest))
    if failed:
        typer.echo(f"error: {failed} slide(s) failed, see {manifest}", err=True)
        raise typer.Exit(1)
