"""The stages a pipeline step can use: each a typed `with:` schema, named outputs and a function that runs it.

A stage function gets a StepContext (its settings, its folder, its resolved trainer config) and returns its
outputs as paths. It calls the same Python function as the matching CLI command; training stages can also be
launched under torchrun, as that CLI command. Every stage must resume (or cheaply redo) when run again in the
same folder: a killed pipeline relies on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pathgen.config import Section, load_config
from pathgen.store.codecs import DEFAULT_CODEC, DEFAULT_QUALITY


@dataclass
class StepContext:
    name: str
    dir: Path  # <run>/<step>: everything the step writes
    params: Section  # the validated `with:` settings, references substituted
    config: BaseModel | None = None  # training stages: the resolved config (overrides, run.out_dir applied)


@dataclass(frozen=True)
class Stage:
    params: type[Section]
    outputs: dict[str, str]  # output name -> path relative to the step folder
    run: Callable[[StepContext], None]
    inputs: tuple[str, ...] = ()  # `with:` keys naming files from outside the run: checksummed for reruns
    config: Callable[[Path | None, list[str], Path], BaseModel] | None = None  # training stages' config loader
    cli: tuple[str, ...] = ()  # the pathgen subcommand that runs a training stage under torchrun


# ---------------------------------------------------------------------------------------------- demo data


class CohortParams(Section):
    n_slides: int = 6  # half "positive" (small lesion-texture regions), half "negative"
    seed: int = 0
    width: int = 4096  # level-0 pixels at `mpp`
    height: int = 3072
    mpp: float = 0.25


def run_cohort(ctx: StepContext) -> None:
    from pathgen.pipeline.demo_cohort import make_demo_cohort

    make_demo_cohort(ctx.dir, **ctx.params.model_dump())


class PatchesParams(Section):
    n_per_class: int = 300  # labelled normal / lesion patches cut from held-out slides
    size: int = 64
    seed: int = 0


def run_patches(ctx: StepContext) -> None:
    from pathgen.pipeline.demo_cohort import make_demo_patches

    make_demo_patches(ctx.dir / "patches", **ctx.params.model_dump())


# ---------------------------------------------------------------------------------------------- tiling


class TileParams(Section):
    slides: list[str]  # files, folders or slide-list CSVs
    mpp: float = 0.5
    patch_size: int = 256
    format: str = "zarr"
    workers: int = 1
    tissue_threshold: float = 0.5
    coords_only: bool = False
    reader: str = "auto"  # see `pathgen tile --help`
    codec: str = DEFAULT_CODEC  # jpeg, webp or lossless (pathgen.store.codecs)
    quality: int = DEFAULT_QUALITY
    slide_mpp: float | None = None


def run_tile(ctx: StepContext) -> None:
    from pathgen.errors import PathgenError
    from pathgen.slide.tiler import summary_path, tile_cohort
    from pathgen.store.manifest import read_manifest

    p = ctx.params
    manifest = tile_cohort(p.slides, ctx.dir, mpp=p.mpp, patch_size=p.patch_size, fmt=p.format, workers=p.workers,
                           tissue_threshold=p.tissue_threshold, coords_only=p.coords_only, reader=p.reader,
                           codec=p.codec, quality=p.quality, slide_mpp=p.slide_mpp)
    print(summary_path(manifest).read_text().rstrip())
    rows = read_manifest(manifest)
    # a corrupt slide is recorded and skipped, never fatal to the cohort; a cohort with no usable slide is
    if not any(r.status in ("ok", "skipped") for r in rows):
        raise PathgenError(f"{manifest}: no slide could be tiled")


# ---------------------------------------------------------------------------------------------- training


class NoParams(Section):
    pass


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


# ---------------------------------------------------------------------------------------------- evaluation


class KnnParams(Section):
    encoders: dict[str, str]  # display name -> encoder spec (an export, random:<export> or timm:<name>)
    train: list[str]
    test: list[str] = []
    test_fraction: float = 0.3
    seed: int = 0
    k: int = 20


def run_knn(ctx: StepContext) -> None:
    from pathgen.eval.report import print_results, write_json
    from pathgen.eval.run import evaluate_encoder

    p = ctx.params
    results: dict[str, Any] = {}
    for name, spec in p.encoders.items():
        payload = evaluate_encoder("knn", spec, p.train, p.test or None, ks=(p.k,), test_fraction=p.test_fraction,
                                   seed=p.seed)
        results[name] = payload["results"][f"k={p.k}"] | {"n_test": payload["n_test"]}
    print_results(f"kNN (k={p.k})", results)
    write_json(ctx.dir / "knn.json", results)


class CompareParams(Section):
    encoders: dict[str, str]  # display name -> encoder spec (an export, random:<export> or timm:<name>)
    train: list[str]
    test: list[str] = []
    test_fraction: float = 0.3
    seed: int = 0
    k: int = 20


def run_compare(ctx: StepContext) -> None:
    from rich.console import Console

    from pathgen.eval.compare import compare_encoders, comparison_table, write_table

    p = ctx.params
    table = compare_encoders(list(p.encoders.values()), p.train, p.test or None, k=p.k, test_fraction=p.test_fraction,
                             seed=p.seed)
    names = {spec: name for name, spec in p.encoders.items()}
    for row in table["rows"]:
        row["name"] = names[row["encoder"]]
    Console().print(comparison_table(table))
    write_table(table, ctx.dir / "compare")


STAGES: dict[str, Stage] = {
    "demo-cohort": Stage(CohortParams, {"labels": "labels.csv"}, run_cohort),
    "demo-patches": Stage(PatchesParams, {"patches": "patches"}, run_patches),
    "tile": Stage(TileParams, {"manifest": "manifest.csv", "dir": "."}, run_tile, inputs=("slides",)),
    "pretrain-ssl": Stage(NoParams, {"encoder": "encoder.safetensors", "dir": "."}, run_ssl, config=ssl_config,
                          cli=("pretrain", "ssl")),
    "pretrain-gensis": Stage(NoParams, {"encoder": "encoder.safetensors", "dir": "."}, run_ssl, config=gensis_config,
                             cli=("pretrain", "gensis")),
    "eval-knn": Stage(KnnParams, {"results": "knn.json"}, run_knn, inputs=("train", "test")),
    "eval-compare": Stage(CompareParams, {"results": "compare.json", "table": "compare.csv"}, run_compare,
                          inputs=("train", "test")),
}
