"""`pathgen demo`: make a small synthetic cohort and run it through every stage, on CPU in minutes.

    cohort (SVS slides + labels.csv) -> tile (patch stores + QC) -> DINO SSL (encoder) -> kNN vs random init

The stages are the same functions the CLI commands call; this module only wires them together, reading its
settings from pipelines/demo.yaml. A rerun reuses what an earlier run finished (tiling skips finished slides,
training is skipped when its encoder exists), so an interrupted demo picks up where it stopped.
"""

import os
import shutil
from pathlib import Path

from rich.console import Console

from pathgen.config import Section, load_config

console = Console()


class CohortStep(Section):
    n_slides: int = 6
    seed: int = 0
    width: int = 4096
    height: int = 3072
    mpp: float = 0.25


class TileStep(Section):
    mpp: float = 0.5
    patch_size: int = 64
    format: str = "zarr"
    workers: int = 2
    tissue_threshold: float = 0.5


class SSLStep(Section):
    config: str = "../configs/ssl/tiny_cpu.yaml"  # relative to the pipeline file
    overrides: list[str] = []


class EvalStep(Section):
    n_per_class: int = 100
    test_fraction: float = 0.3
    seed: int = 0


class DemoConfig(Section):
    cohort: CohortStep = CohortStep()
    tile: TileStep = TileStep()
    ssl: SSLStep = SSLStep()
    eval: EvalStep = EvalStep()


def default_pipeline() -> Path:
    """pipelines/demo.yaml of the source tree, or of $PATHGEN_HOME (the Docker image sets it)."""
    home = Path(os.environ.get("PATHGEN_HOME", Path(__file__).resolve().parents[2]))
    return home / "pipelines" / "demo.yaml"


def _stage(title: str) -> None:
    console.rule(f"[bold]{title}")


def run_cohort(cfg: CohortStep, out: Path) -> Path:
    from pathgen.pipeline.demo_cohort import make_demo_cohort

    labels = out / "labels.csv"
    if labels.is_file():
        console.print(f"cohort exists: {labels}")
        return labels
    return make_demo_cohort(out, **cfg.model_dump())


def run_tiling(cfg: TileStep, labels: Path, out: Path) -> Path:
    from pathgen.errors import PathgenError
    from pathgen.slide.tiler import summary_path, tile_cohort
    from pathgen.store.manifest import read_manifest

    manifest = tile_cohort(
        [labels], out, mpp=cfg.mpp, patch_size=cfg.patch_size, fmt=cfg.format, workers=cfg.workers,
        tissue_threshold=cfg.tissue_threshold,
    )
    console.print(summary_path(manifest).read_text().rstrip())
    if any(row.status == "failed" for row in read_manifest(manifest)):
        raise PathgenError(f"{manifest}: some demo slides failed to tile")
    return manifest


def run_ssl(cfg: SSLStep, pipeline: Path, manifest: Path, out: Path) -> Path:
    from pathgen.runtime.distributed import cleanup
    from pathgen.ssl.config import SSLConfig
    from pathgen.ssl.export import WEIGHTS
    from pathgen.ssl.trainer import train

    encoder = out / WEIGHTS
    if encoder.is_file():
        console.print(f"encoder exists: {encoder}")
        return encoder
    ssl_cfg = load_config(SSLConfig, pipeline.parent / cfg.config, cfg.overrides)
    ssl_cfg.data.sources = [str(manifest)]
    ssl_cfg.run.out_dir = str(out)
    try:
        train(ssl_cfg, resume="auto")
    finally:
        cleanup()
    return encoder


def run_knn(cfg: EvalStep, encoder: Path, out: Path) -> dict:
    """kNN on labelled normal/lesion patches: the trained encoder against the same architecture at random init."""
    from pathgen.eval.report import print_results, write_json
    from pathgen.eval.run import evaluate_encoder
    from pathgen.pipeline.demo_cohort import make_demo_patches

    patches = out / "labelled_patches"
    if not (patches / "ground_truth.csv").is_file():  # written last: without it the folder is unfinished
        shutil.rmtree(patches, ignore_errors=True)
        make_demo_patches(patches, n_per_class=cfg.n_per_class, seed=cfg.seed)
    results = {}
    for name, spec in (("pathgen DINO", str(encoder)), ("random init", f"random:{encoder}")):
        results[name] = evaluate_encoder(
            "knn", spec, [str(patches)], test_fraction=cfg.test_fraction, seed=cfg.seed
        )["results"]["k=20"]
    print_results("kNN (k=20) on labelled demo patches", results)
    write_json(out / "knn.json", results)
    return results


def run_demo(out_dir: str | Path, pipeline: str | Path | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """Run the whole demo into `out_dir`; returns the kNN results."""
    pipeline = Path(pipeline) if pipeline else default_pipeline()
    cfg = load_config(DemoConfig, pipeline, overrides)
    out = Path(out_dir)
    _stage("1/4 synthetic cohort")
    labels = run_cohort(cfg.cohort, out / "cohort")
    _stage("2/4 tile")
    manifest = run_tiling(cfg.tile, labels, out / "patches")
    _stage("3/4 DINO self-supervised pretraining")
    encoder = run_ssl(cfg.ssl, pipeline, manifest, out / "ssl")
    _stage("4/4 kNN evaluation")
    results = run_knn(cfg.eval, encoder, out / "eval")
    console.print(f"done: everything is in {out}/ (QC pictures in {out}/patches/qc/)")
    return results
