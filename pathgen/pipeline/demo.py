"""`pathgen demo`: pipelines/demo.yaml through the pipeline runner, then its summary as a table and as JSON.

The demo wires nothing itself: every stage, its settings and its order are in the pipeline file, so `pathgen run
pipelines/demo.yaml` does the same work. A rerun reuses every finished step; an interrupted demo resumes.

<out>/summary.json, for scripts (top-1 values and retrieval in percent, MIL metrics as fractions):

    {"knn": {"random": top1, "dino": top1, "gensis": top1}, "linear": {...},
     "fidelity": {"retrieval_top1": x, "chance": y}, "mil": {"dino": {"auc": ..}, "gensis": {"auc": ..}},
     "patches": n, "n_test": n, "pictures": {name: path}, "seconds": total}

It reads the outputs of the demo pipeline's steps by name (STEPS); a pipeline without one of them (a cut-down
demo) leaves that part out.
"""

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()

STEPS = {"tile": "tile", "ssl": "ssl", "generate": "generate", "labelled": "labelled", "compare": "compare",
         "mil": {"dino": "mil_dino", "gensis": "mil_gensis"}, "heatmap": "heatmap"}
MIL_METRICS = ("auc", "balanced_accuracy", "f1_macro")


def default_pipeline() -> Path:
    """pipelines/demo.yaml of the source tree, or of $PATHGEN_HOME (the Docker image sets it)."""
    home = Path(os.environ.get("PATHGEN_HOME", Path(__file__).resolve().parents[2]))
    return home / "pipelines" / "demo.yaml"


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(run_dir: Path, seconds: float) -> dict:
    """The demo's headline figures, from its steps' outputs."""
    summary: dict = {}
    compare = _json(run_dir / STEPS["compare"] / "compare.json")
    if compare:
        summary["knn"] = {r["name"]: round(100 * r["knn_top1"], 2) for r in compare["rows"]}
        summary["linear"] = {r["name"]: round(100 * r["linear_top1"], 2) for r in compare["rows"]}
        summary["n_test"] = compare["rows"][0]["n_test"]
    views = (_json(run_dir / STEPS["generate"] / "fidelity.json") or {}).get("views")
    if views:
        summary["fidelity"] = {"retrieval_top1": round(100 * views["retrieval_top1"], 2),
                               "chance": round(100 * views["chance"], 2), "n_candidates": views["n_candidates"],
                               "cos_source": views["cos_source"], "cos_random": views["cos_random"]}
    mil = {}
    for name, step in STEPS["mil"].items():
        metrics = _json(run_dir / step / "metrics.json")
        if metrics:
            mil[name] = {m: metrics["summary"][m]["mean"] for m in MIL_METRICS if m in metrics["summary"]}
    if mil:
        summary["mil"] = mil
    manifest = run_dir / STEPS["tile"] / "manifest.csv"
    if manifest.is_file():
        from pathgen.store.manifest import read_manifest

        summary["patches"] = sum(r.n_patches for r in read_manifest(manifest) if r.status != "failed")
    pictures = {"qc": run_dir / STEPS["tile"] / "qc", "views": run_dir / STEPS["ssl"] / "views.png",
                "labelled examples": run_dir / STEPS["labelled"] / "patches" / "examples.png",
                "generation grid": run_dir / STEPS["generate"] / "grid.png",
                "attention heatmap": run_dir / STEPS["heatmap"] / "heatmap.png"}
    summary["pictures"] = {name: str(p) for name, p in pictures.items() if p.exists()}
    summary["seconds"] = round(seconds, 1)
    return summary


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}%"


def print_summary(summary: dict) -> None:
    table = Table(title="pathgen demo")
    table.add_column("what")
    table.add_column("result", justify="right")
    if "patches" in summary:
        table.add_row("patches tiled", str(summary["patches"]))
    for name, top1 in summary.get("knn", {}).items():
        table.add_row(f"kNN top-1, {name} (n_test {summary['n_test']})", _pct(top1))
    for name, top1 in summary.get("linear", {}).items():
        table.add_row(f"linear top-1, {name}", _pct(top1))
    if "fidelity" in summary:
        f = summary["fidelity"]
        table.add_row(f"diffusion fidelity: source retrieved among {f['n_candidates']} (chance)",
                      f"{_pct(f['retrieval_top1'])} ({_pct(f['chance'])})")
    for name, metrics in summary.get("mil", {}).items():
        table.add_row(f"MIL on {name} features: AUC / balanced acc / F1",
                      " / ".join("-" if metrics.get(m) is None else f"{metrics[m]:.3f}" for m in MIL_METRICS))
    for name, path in summary["pictures"].items():
        table.add_row(f"picture: {name}", path)
    table.add_row("seconds", f"{summary['seconds']:.0f}")
    console.print(table)


def run_demo(out_dir: str | Path | None = None, pipeline: str | Path | None = None,
             overrides: tuple[str, ...] = ()) -> dict:
    """Run the demo pipeline into `out_dir` (default: the pipeline's `out`); returns the summary."""
    from pathgen.eval.report import write_json
    from pathgen.pipeline.runner import Pipeline

    t0 = time.perf_counter()
    pipe = Pipeline(pipeline or default_pipeline(), out_dir, overrides)
    pipe.run()
    summary = summarize(pipe.run_dir, time.perf_counter() - t0)
    write_json(pipe.run_dir / "summary.json", summary)
    print_summary(summary)
    console.print(f"done: everything is in {pipe.run_dir}/ (summary.json, pipeline.json, logs/)")
    return summary
