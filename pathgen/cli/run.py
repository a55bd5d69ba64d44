"""`pathgen run PIPELINE.yaml`: a whole workflow from one file, skipping the steps that are already done."""

from pathlib import Path

import typer

from pathgen.cli.app import app


@app.command("run")
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML, e.g. pipelines/histo_gensis.yaml.", show_default=False),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides: STEP.KEY=VALUE sets a step's setting (tile.workers=8), "
        "STEP.overrides=[..] its config overrides, out=DIR the run folder."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: the pipeline's `out`)."),
    plan: bool = typer.Option(False, "--plan", help="Print, per step, whether it would run or be skipped, and why."),
    from_step: str = typer.Option(None, "--from", help="Rerun from this step on (earlier steps must be done)."),
    until_step: str = typer.Option(None, "--until", help="Stop after this step."),
    only: str = typer.Option(None, "--only", help="Run just this step if it needs to (resuming it if unfinished); "
                             "earlier steps must be done. What a multi-node SLURM job runs on each node."),
) -> None:
    """Run a pipeline: tile -> pretrain ssl -> pretrain diffusion -> generate -> pretrain gensis -> features/MIL.

    Each step records its settings, resolved config, what it consumed and its outputs in <run>/pipeline.json,
    and logs to <run>/logs/<step>.log. A rerun skips unchanged steps and redoes changed ones with everything
    downstream; a killed run resumes. Training steps with `gpus: N` (or `nodes: N`) run under torchrun.
    """
    from pathgen.pipeline.runner import Pipeline, print_plan

    pipe = Pipeline(pipeline, out, tuple(overrides or ()))
    if plan:
        print_plan(pipe.plan(from_step, until_step, only))
        return
    pipe.run(from_step, until_step, only)
