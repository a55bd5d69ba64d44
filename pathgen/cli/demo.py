"""`pathgen demo`: the built-in end-to-end demo on a synthetic cohort."""

from pathlib import Path

import typer

from pathgen.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: the pipeline's `out`, demo_out)."),
    pipeline: Path = typer.Option(None, "--pipeline", help="Pipeline YAML (default: pipelines/demo.yaml)."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. cohort.n_slides=4 tile.workers=1."),
) -> None:
    """Run pipelines/demo.yaml: a synthetic slide cohort through every stage, on CPU in minutes, then a summary.

    Rerunning with the same --out reuses every finished step; an interrupted demo resumes.
    """
    from pathgen.pipeline.demo import run_demo

    run_demo(out, pipeline, tuple(overrides or ()))
