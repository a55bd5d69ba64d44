"""Stages that make data: the demo's synthetic cohort and labelled patches, tiling, and packing image folders."""

from __future__ import annotations

from pathgen.config import Section
from pathgen.pipeline.stages import Stage, StepContext
from pathgen.store.codecs import DEFAULT_CODEC, DEFAULT_QUALITY
from pathgen.store.pack import DEFAULT_PER_STORE


class CohortParams(Section):
    n_slides: int = 6  # half "positive" (lesion regions), half "negative"
    seed: int = 0
    width: int = 4096  # level-0 pixels at `mpp`
    height: int = 3072
    mpp: float = 0.25


def run_cohort(ctx: StepContext) -> None:
    from pathgen.pipeline.demo_cohort import make_demo_cohort

    make_demo_cohort(ctx.dir, **ctx.params.model_dump())


class PatchesParams(Section):
    n_per_class: int = 200  # labelled normal / lesion patches per split, cut from held-out slides
    n_slides: int = 8  # held-out slides: half give the train patches, the other half the test patches
    width: int = 4096  # of each held-out slide, level-0 pixels at 0.25 mpp
    height: int = 3072
    size: int = 64  # patch side at 0.5 mpp
    seed: int = 0


def run_patches(ctx: StepContext) -> None:
    from pathgen.pipeline.demo_patches import make_demo_patches

    make_demo_patches(ctx.dir / "patches", **ctx.params.model_dump())


class TileParams(Section):
    """`pathgen tile`'s options (see its --help)."""

    slides: list[str]  # files, folders or slide-list CSVs
    mpp: float | None = None  # 0.5 unless magnification is given
    magnification: float | None = None
    patch_size: int = 256
    overlap: int = 0
    format: str = "zarr"
    workers: int = 1
    tissue_threshold: float = 0.5
    coords_only: bool = False
    reader: str = "auto"  # see `pathgen tile --help`
    codec: str = DEFAULT_CODEC  # jpeg, webp or lossless (pathgen.store.codecs)
    quality: int = DEFAULT_QUALITY
    slide_mpp: float | None = None
    roi: str | None = None  # a folder of QuPath GeoJSON annotations, one per slide


def run_tile(ctx: StepContext) -> None:
    from pathgen.errors import PathgenError
    from pathgen.slide.tiler import summary_path, tile_cohort
    from pathgen.store.manifest import read_manifest

    p = ctx.params
    manifest = tile_cohort(p.slides, ctx.dir, mpp=p.mpp, magnification=p.magnification, patch_size=p.patch_size,
                           overlap=p.overlap, fmt=p.format, workers=p.workers, tissue_threshold=p.tissue_threshold,
                           coords_only=p.coords_only, reader=p.reader, codec=p.codec, quality=p.quality,
                           slide_mpp=p.slide_mpp, roi=p.roi)
    print(summary_path(manifest).read_text().rstrip())
    rows = read_manifest(manifest)
    # a corrupt slide is recorded and skipped, never fatal to the cohort; a cohort with no usable slide is
    if not any(r.status in ("ok", "skipped") for r in rows):
        raise PathgenError(f"{manifest}: no slide could be tiled")


class PackParams(Section):
    """`pathgen pack`'s options (see its --help)."""

    images: str  # an ImageFolder root or a path,label CSV of images
    size: int = 256
    per_store: int = DEFAULT_PER_STORE
    codec: str = DEFAULT_CODEC
    quality: int = DEFAULT_QUALITY
    workers: int = 1


def run_pack(ctx: StepContext) -> None:
    from pathgen.store.manifest import summary_path
    from pathgen.store.pack import pack_images

    p = ctx.params
    manifest = pack_images(p.images, ctx.dir, size=p.size, per_store=p.per_store, codec=p.codec, quality=p.quality,
                           workers=p.workers)
    print(summary_path(manifest).read_text().rstrip())


STAGES = {
    "demo-cohort": Stage(CohortParams, {"labels": "labels.csv"}, run_cohort),
    "demo-patches": Stage(PatchesParams, {"patches": "patches", "train": "patches/train", "test": "patches/test",
                                          "examples": "patches/examples.png"}, run_patches),
    "tile": Stage(TileParams, {"manifest": "manifest.csv", "dir": "."}, run_tile, inputs=("slides", "roi")),
    "pack": Stage(PackParams, {"manifest": "manifest.csv", "dir": "."}, run_pack, inputs=("images",)),
}
