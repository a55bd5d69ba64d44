"""Evaluation stages: frozen-encoder kNN / linear probes, feature extraction, MIL classifiers, their comparison and
heatmaps."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pathgen.config import Section, load_config
from pathgen.pipeline.stages import Stage, StepContext


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


class CompareParams(KnnParams):
    """eval-knn's settings, and how the images are fed to both probes."""

    img_size: int | None = None  # default: each encoder's own input size
    batch_size: int = 64
    workers: int = 0  # DataLoader workers decoding the images


def run_compare(ctx: StepContext) -> None:
    from rich.console import Console

    from pathgen.eval.compare import compare_encoders, comparison_table, write_table

    p = ctx.params
    table = compare_encoders(list(p.encoders.values()), p.train, p.test or None, k=p.k, test_fraction=p.test_fraction,
                             seed=p.seed, img_size=p.img_size, batch_size=p.batch_size, workers=p.workers)
    names = {spec: name for name, spec in p.encoders.items()}
    for row in table["rows"]:
        row["name"] = names[row["encoder"]]
    Console().print(comparison_table(table))
    write_table(table, ctx.dir / "compare")


class FeaturesParams(Section):
    """`pathgen extract-features`: every encoder reads each patch once."""

    encoders: dict[str, str]  # name -> encoder spec; features go to features_<name>/
    stores: list[str]  # stores, folders, globs or a tiling manifest
    from_slides: str | None = None  # read pixels from these slides (coords-only stores)
    batch_size: int = 64
    workers: int = 2
    fp16: bool = False
    export_pt: bool = False
    img_size: int | None = None


def run_features(ctx: StepContext) -> None:
    from pathgen.errors import PathgenError
    from pathgen.features import extract_features

    p = ctx.params
    result = extract_features([f"{name}={spec}" for name, spec in p.encoders.items()], p.stores, ctx.dir,
                              from_slides=p.from_slides, batch_size=p.batch_size, workers=p.workers, fp16=p.fp16,
                              export_pt=p.export_pt, img_size=p.img_size)
    # a slide that fails is recorded (extraction.csv) and skipped; a run where every slide failed is not a result
    if result.rows and len(result.failed) == len(result.rows):
        raise PathgenError(f"{result.manifest}: no slide's features could be extracted")


class MILParams(Section):
    features: str  # a features_<encoder>/ folder
    labels: str  # CSV slide_id,label[,case_id]


def mil_config(path: Path | None, overrides: list[str], out: Path) -> BaseModel:
    from pathgen.mil.config import MILConfig

    return load_config(MILConfig, path, [*overrides, f"run.out_dir={out}"])


def run_mil(ctx: StepContext) -> None:
    from pathgen.mil.train import train_mil

    train_mil(ctx.params.features, ctx.params.labels, ctx.dir, ctx.config)


class MILCompareParams(Section):
    metrics: dict[str, str]  # encoder name -> a mil step's metrics.json


def run_mil_compare(ctx: StepContext) -> None:
    from rich.console import Console

    from pathgen.eval.report import write_json
    from pathgen.mil.report import compare_results, comparison_table

    table = compare_results(ctx.params.metrics)
    Console().print(comparison_table(table))
    write_json(ctx.dir / "compare.json", table)
    with open(ctx.dir / "compare.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["encoder", *(f"{m}_{k}" for m in table["metrics"] for k in ("mean", "std", "pooled"))])
        for row in table["rows"]:
            writer.writerow([row["encoder"], *(row[m][k] for m in table["metrics"] for k in ("mean", "std", "pooled"))])


class HeatmapParams(Section):
    model: str  # a mil step's folder
    features: str
    slide: str | None = None  # default: the first slide (by id) labelled `positive` in `labels`
    labels: str | None = None
    positive: str = "positive"
    max_side: int = 1024


def first_with_label(labels: str | Path, label: str) -> str:
    from pathgen.errors import ConfigError

    with open(labels, newline="", encoding="utf-8") as f:
        slides = sorted(row["slide_id"] for row in csv.DictReader(f) if row.get("label") == label)
    if not slides:
        raise ConfigError(labels, f"no slide labelled {label!r}")
    return slides[0]


def run_heatmap(ctx: StepContext) -> None:
    from pathgen.errors import ConfigError
    from pathgen.mil.heatmap import mil_heatmap

    p = ctx.params
    if p.slide is None and p.labels is None:
        raise ConfigError(None, "mil-heatmap needs a slide, or labels to pick a positive slide from")
    slide = p.slide or first_with_label(p.labels, p.positive)
    result = mil_heatmap(p.model, p.features, slide, ctx.dir / "heatmap.png", max_side=p.max_side)
    print(f"heatmap of {slide}: {ctx.dir / 'heatmap.png'} ({result})")


STAGES = {
    "eval-knn": Stage(KnnParams, {"results": "knn.json"}, run_knn, inputs=("train", "test")),
    "eval-compare": Stage(CompareParams, {"results": "compare.json", "table": "compare.csv"}, run_compare,
                          inputs=("train", "test")),
    "extract-features": Stage(FeaturesParams, {"dir": ".", "manifest": "extraction.csv"}, run_features,
                              inputs=("stores", "from_slides")),
    "mil": Stage(MILParams, {"metrics": "metrics.json", "dir": "."}, run_mil, inputs=("features", "labels"),
                 config=mil_config),
    "mil-compare": Stage(MILCompareParams, {"results": "compare.json", "table": "compare.csv"}, run_mil_compare),
    "mil-heatmap": Stage(HeatmapParams, {"heatmap": "heatmap.png"}, run_heatmap, inputs=("labels",)),
}
