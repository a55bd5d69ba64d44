"""The stages a pipeline step can use: each a typed `with:` schema, named outputs and a function that runs it.

A stage function gets a StepContext (its settings, its folder, its resolved trainer config) and writes its
outputs, whose paths (relative to the step folder) the Stage declares. It calls the same Python function as the
matching CLI command; training stages can also be launched under torchrun, as that CLI command. Every stage must
resume (or cheaply redo) when run again in the same folder: a killed pipeline relies on it.

    data.py        demo-cohort, demo-patches, tile, pack
    training.py    pretrain-ssl, pretrain-diffusion, generate, pretrain-gensis
    evaluation.py  eval-knn, eval-compare, extract-features, mil, mil-compare, mil-heatmap
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from pathgen.config import Section


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


class NoParams(Section):
    pass


def _registry() -> dict[str, Stage]:
    from pathgen.pipeline.stages import data, evaluation, training

    return {**data.STAGES, **training.STAGES, **evaluation.STAGES}


STAGES: dict[str, Stage] = _registry()
