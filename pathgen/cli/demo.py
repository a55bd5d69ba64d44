"""`pathgen demo`: the built-in end-to-end demo on a synthetic cohort."""

from pathlib import Path

import typer

from pathgen.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Where the cohort, stores, encoder and results go."),
    pipeline: Path = typer.Option(None, "--pipeline", help="Pipeline YAML (default: pipelines/demo.yaml)."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. cohort.n_slides=4 tile.workers=1."),
) -> None:
    """Make a small synthetic slide cohort and run tile -> DINO SSL -> kNN evaluation on it, on CPU in minutes.

    Rerunning with the same --out reuses every finished stage.
    """
    from pathgen.pipeline.demo import run_demo

    run_demo(out, pipeline, tuple(overrides or ()))
