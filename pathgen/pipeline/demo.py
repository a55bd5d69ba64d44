"""`pathgen demo`: pipelines/demo.yaml through the pipeline runner, then its summary as a table and as JSON.

The demo wires nothing itself: every stage, its settings and its order are in the pipeline file, so `pathgen run
pipelines/demo.yaml` does the same work. A rerun reuses every finished step; an interrupted demo resumes.
"""

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def default_pipeline() -> Path:
    """pipelines/demo.yaml of the source tree, or of $PATHGEN_HOME (the Docker image sets it)."""
    home = Path(os.environ.get("PATHGEN_HOME", Path(__file__).resolve().parents[2]))
    return home / "pipelines" / "demo.yaml"


def summarize(run_dir: Path, seconds: float) -> dict:
    """The demo's headline figures from its steps' outputs: {"knn": {name: top1 %}, ..., "seconds": total}."""
    knn = json.loads((run_dir / "knn" / "knn.json").read_text())
    summary = {"knn": {name: round(100 * r["top1"], 2) for name, r in knn.items()},
               "n_test": next(iter(knn.values()))["n_test"], "seconds": round(seconds, 1)}
    manifest = run_dir / "tile" / "manifest.csv"
    if manifest.is_file():
        from pathgen.store.manifest import read_manifest

        summary["patches"] = sum(r.n_patches for r in read_manifest(manifest) if r.status != "failed")
    summary["pictures"] = {name: str(p) for name, p in (
        ("qc", run_dir / "tile" / "qc"), ("views", run_dir / "ssl" / "views.png"),
        ("labelled examples", run_dir / "labelled" / "patches" / "examples.png")) if p.exists()}
    return summary


def print_summary(summary: dict) -> None:
    table = Table(title="pathgen demo")
    table.add_column("what")
    table.add_column("result", justify="right")
    if "patches" in summary:
        table.add_row("patches tiled", str(summary["patches"]))
    for name, top1 in summary["knn"].items():
        table.add_row(f"kNN top-1, {name} (n_test {summary['n_test']})", f"{top1:.1f}%")
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
