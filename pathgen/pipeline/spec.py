"""Pipeline files: the steps of a run, each a stage with typed settings, chained by references to outputs.

    out: runs/histo                      # the run folder (relative to the working directory; --out overrides)
    steps:
      tile:
        uses: tile                       # a stage (pathgen.pipeline.stages.STAGES)
        with: {slides: [cohort.csv], mpp: 0.5, patch_size: 256}
      ssl:
        uses: pretrain-ssl
        config: configs/ssl/histo_vits16.yaml
        overrides: ["data.sources=[${tile.manifest}]"]
        gpus: 8                          # > 1 (or nodes > 1): launched under torchrun

`${step.output}` names an output of an earlier step; references decide what a step depends on. Steps run in
file order. Overrides on the command line address the file's keys, with two shorthands: `STEP.KEY=VALUE` sets
`steps.STEP.with.KEY` (or the step's own field: uses, config, overrides, gpus, nodes), and `STEP:KEY=VALUE` appends
`KEY=VALUE` to the step's config overrides (`ssl:optim.epochs=2`).
Data paths are relative to the working directory, as on the command line; config files are looked up there
first, then beside the pipeline file, then in $PATHGEN_HOME (where the Docker image keeps configs/).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from pathgen.config import Section, load_config
from pathgen.errors import ConfigError

REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*)\.([A-Za-z_]\w*)\}")


class StepSpec(Section):
    uses: str
    config: str | None = None  # the stage's own config file (trainers), relative to the pipeline file
    overrides: list[str] = []  # dotted overrides of that config; may hold ${step.output} references
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")  # the stage's settings
    gpus: int = 1  # per node; > 1 launches the step under torchrun
    nodes: int = 1

    model_config = Section.model_config | {"populate_by_name": True}


class PipelineSpec(Section):
    out: str = "runs/pipeline"
    budget_minutes: float | None = None  # reported against at the end (the demo's promise)
    steps: dict[str, StepSpec]


def _step_fields() -> set[str]:
    return {name if f.alias is None else f.alias for name, f in StepSpec.model_fields.items()}


def _expand(overrides: tuple[str, ...] | list[str], steps: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(pipeline overrides, config overrides per step).

    `tile.workers=1` -> `steps.tile.with.workers=1`; `ssl.overrides=[..]` -> `steps.ssl.overrides=[..]`;
    `ssl:optim.epochs=2` -> `optim.epochs=2` appended to step ssl's config overrides.
    """
    out, appended = [], {}
    for override in overrides:
        key, sep, value = override.partition("=")
        step, colon, config_key = key.partition(":")
        if colon and step in steps:
            appended.setdefault(step, []).append(f"{config_key}{sep}{value}")
            continue
        head, _, rest = key.partition(".")
        if sep and head in steps and rest:
            field = rest.split(".", 1)[0]
            key = f"steps.{head}.{rest}" if field in _step_fields() else f"steps.{head}.with.{rest}"
        out.append(f"{key}{sep}{value}")
    return out, appended


def load_pipeline(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> PipelineSpec:
    """Read and validate a pipeline file with dotted overrides; a one-line ConfigError names the file and key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "pipeline file not found")
    try:
        names = set((yaml.safe_load(path.read_text()) or {}).get("steps") or {})
    except (yaml.YAMLError, AttributeError):
        names = set()  # load_config reports the problem with its line
    pipeline_overrides, config_overrides = _expand(overrides, names)
    spec = load_config(PipelineSpec, path, pipeline_overrides)
    for name, extra in config_overrides.items():
        spec.steps[name].overrides = [*spec.steps[name].overrides, *extra]
    from pathgen.pipeline.stages import STAGES

    for name, step in spec.steps.items():
        if step.uses not in STAGES:
            raise ConfigError(path, f"steps.{name}.uses: unknown stage {step.uses!r}; one of {', '.join(STAGES)}")
        if step.gpus < 1 or step.nodes < 1:
            raise ConfigError(path, f"steps.{name}: gpus and nodes must be >= 1")
    check_references(spec, path)
    return spec


def references(value: Any) -> list[tuple[str, str]]:
    """Every (step, output) that `value` (a string, or lists/dicts of them) refers to."""
    if isinstance(value, str):
        return REFERENCE.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def step_references(step: StepSpec) -> list[tuple[str, str]]:
    return references(step.with_) + references(step.overrides) + references(step.config or "")


def check_references(spec: PipelineSpec, path: Path) -> None:
    """References must name an earlier step and one of its stage's outputs."""
    from pathgen.pipeline.stages import STAGES

    seen: list[str] = []
    for name, step in spec.steps.items():
        for ref_step, output in step_references(step):
            if ref_step not in seen:
                why = "a later step" if ref_step in spec.steps else "no such step"
                raise ConfigError(path, f"steps.{name}: ${{{ref_step}.{output}}} refers to {why}")
            outputs = STAGES[spec.steps[ref_step].uses].outputs
            if output not in outputs:
                raise ConfigError(path, f"steps.{name}: ${{{ref_step}.{output}}}: step {ref_step} has outputs "
                                  f"{', '.join(outputs)}")
        seen.append(name)


def substitute(value: Any, outputs: dict[str, dict[str, str]]) -> Any:
    """Replace ${step.output} by the recorded output path, recursively."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: str(outputs[m.group(1)][m.group(2)]), value)
    if isinstance(value, dict):
        return {k: substitute(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, outputs) for v in value]
    return value
