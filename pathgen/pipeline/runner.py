"""`pathgen run PIPELINE.yaml`: run the steps of a pipeline, skipping those whose inputs and settings are unchanged.

Each step's fingerprint is a sha256 of what decides its result: its stage, its `with:` settings, its resolved
config (training stages), the fingerprints of the steps it consumes and a signature (size, mtime) of the files
it reads from outside the run. A step reruns when its fingerprint differs from the one recorded in
<run>/pipeline.json, or when it never finished; a changed upstream step changes every fingerprint downstream of
it. A changed step starts from an empty folder; an unfinished one (a killed pipeline) keeps its folder, so the
stage's own resume (tiling, training, generation, extraction) carries on where it stopped.

pipeline.json records per step: status, fingerprint, its settings and resolved config, what it consumed, its
outputs, the pathgen version, start time, seconds and the path of its log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pathgen.config import describe_error, find_file
from pathgen.errors import ConfigError, PathgenError
from pathgen.pipeline.spec import PipelineSpec, StepSpec, load_pipeline, step_references, substitute
from pathgen.pipeline.stages import STAGES, Stage, StepContext
from pathgen.pipeline.steplog import step_log

RECORD = "pipeline.json"


class PipelineError(PathgenError):
    """A step failed or cannot run; the message names the step, the reason and the log."""


@dataclass
class Planned:
    name: str
    spec: StepSpec
    stage: Stage
    dir: Path
    params: Any  # the validated `with:` settings, references substituted
    config: Any  # training stages: the resolved config; else None
    fingerprint: str
    consumed: dict[str, str]
    action: str = "run"  # run | skip | not run
    reason: str = ""
    fresh: bool = False  # start from an empty folder (the step changed)
    outputs: dict[str, str] = field(default_factory=dict)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_signature(path: str | Path) -> str:
    """What a file or folder from outside the run looks like, cheaply: sizes and mtimes (folders recursively)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return _hash([(str(p.relative_to(path) if p != path else p.name), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in files[:100_000]])


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def _changes(old: dict, new: dict, what: str) -> list[str]:
    a, b = _flat(old or {}), _flat(new or {})
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [f"{what} {k}" for k in keys]


class Pipeline:
    """A loaded pipeline file bound to its run folder."""

    def __init__(self, path: str | Path, out: str | Path | None = None, overrides: tuple[str, ...] = ()):
        self.path = find_file(path, Path(__file__).resolve().parents[2] / "pipelines")
        self.spec: PipelineSpec = load_pipeline(self.path, overrides)
        self.run_dir = Path(out if out is not None else self.spec.out).resolve()
        self.record_path = self.run_dir / RECORD
        self.record = self._read_record()

    def _read_record(self) -> dict:
        if not self.record_path.is_file():
            return {"steps": {}}
        try:
            return json.loads(self.record_path.read_text())
        except (json.JSONDecodeError, OSError) as err:
            raise PipelineError(f"{self.record_path}: unreadable run record ({err}); move it away to start over") \
                from None

    @property
    def is_leader(self) -> bool:
        """Node 0 of a multi-node job (or a plain run) owns the run record and the step folders' clean-up;
        the other nodes of an `srun pathgen run ...` only launch their share of a multi-node step."""
        return node_rank() == 0

    def _save_record(self) -> None:
        if not self.is_leader:
            return
        from pathgen import __version__
        from pathgen.eval.report import write_json

        self.record.update(pipeline=str(self.path), pathgen_version=__version__)
        write_json(self.record_path, self.record)

    # ------------------------------------------------------------------------------------------ planning

    def plan(self, from_step: str | None = None, until_step: str | None = None, only: str | None = None
             ) -> list[Planned]:
        """Per step: run or skip, and why. `from_step` reruns it and everything after (from scratch); `only`
        runs just that step if it needs running (resuming an unfinished one), as multi-node jobs do."""
        names = list(self.spec.steps)
        forced = from_step is not None
        if only is not None:
            from_step = until_step = only
        for option, step in (("--from", from_step), ("--until", until_step)):
            if step is not None and step not in names:
                raise ConfigError(self.path, f"{option} {step}: no such step; steps are {', '.join(names)}")
        start = names.index(from_step) if from_step else 0
        stop = names.index(until_step) if until_step else len(names) - 1
        outputs: dict[str, dict[str, str]] = {}
        fingerprints: dict[str, str] = {}
        planned = []
        for i, name in enumerate(names):
            step = self.planned_step(name, outputs, fingerprints)
            outputs[name], fingerprints[name] = step.outputs, step.fingerprint
            recorded = self.record["steps"].get(name, {})
            if i > stop:
                step.action, step.reason = "not run", f"after --until {until_step}"
            elif i < start:
                done = recorded.get("status") == "done"
                step.action, step.reason = "skip", f"before {from_step}" + ("" if done else " (NOT done)")
            else:
                self._decide(step, recorded, forced=forced)
            planned.append(step)
        return planned

    def planned_step(self, name: str, outputs: dict, fingerprints: dict) -> Planned:
        spec = self.spec.steps[name]
        stage = STAGES[spec.uses]
        folder = self.run_dir / name
        try:
            params = stage.params.model_validate(substitute(spec.with_, outputs))
        except ValidationError as err:
            raise ConfigError(self.path, f"steps.{name}.with.{describe_error(err)}") from None
        config = None
        if stage.config is not None:
            path = find_file(spec.config, self.path.parent) if spec.config else None
            config = stage.config(path, substitute(spec.overrides, outputs), folder)
        elif spec.config or spec.overrides:
            raise ConfigError(self.path, f"steps.{name}: stage {spec.uses} takes no config or overrides")
        consumed = {f"{s}.{o}": fingerprints[s] for s, o in step_references(spec)}
        for key in stage.inputs:
            value = getattr(params, key)
            for path in value if isinstance(value, list) else [value] if value else []:
                if not Path(path).resolve().is_relative_to(self.run_dir):  # run outputs count by fingerprint
                    consumed[f"file {path}"] = file_signature(path)

        def portable(obj: Any) -> str:  # a run folder moved elsewhere keeps its fingerprints
            return json.dumps(obj, sort_keys=True, default=str).replace(str(self.run_dir), "<run>")

        fingerprint = _hash({"uses": spec.uses, "with": portable(params.model_dump(mode="json")),
                             "config": portable(config.model_dump(mode="json") if config else None),
                             "consumed": consumed})
        out = {key: str(folder / rel) for key, rel in stage.outputs.items()}
        return Planned(name, spec, stage, folder, params, config, fingerprint, consumed, outputs=out)

    def _decide(self, step: Planned, recorded: dict, forced: bool) -> None:
        if forced:
            step.reason, step.fresh = "--from", True
        elif not recorded:
            step.reason = "never run"
        elif recorded.get("fingerprint") != step.fingerprint:
            changes = _changes(recorded.get("with"), step.params.model_dump(mode="json"), "setting")
            changes += _changes(recorded.get("config"), step.config.model_dump(mode="json") if step.config else None,
                                "config")
            changes += [f"input {k}" for k in sorted(set(recorded.get("consumed", {})) | set(step.consumed))
                        if recorded.get("consumed", {}).get(k) != step.consumed.get(k)]
            step.reason, step.fresh = "changed: " + (", ".join(changes[:4]) or "stage"), True
        elif recorded.get("status") != "done":
            step.reason = f"{recorded.get('status', 'unfinished')}: resumes in its folder"
        elif not all(Path(p).exists() for p in step.outputs.values()):
            step.reason = "outputs missing"
        else:
            step.action, step.reason = "skip", f"unchanged since {recorded.get('finished', '?')}"

    # ------------------------------------------------------------------------------------------ running

    def run(self, from_step: str | None = None, until_step: str | None = None, only: str | None = None) -> dict:
        """Run the plan; returns the run record. A failing step raises PipelineError (step, reason, log)."""
        planned = self.plan(from_step, until_step, only)
        for step in planned:
            if step.action == "skip" and "NOT done" in step.reason:
                raise PipelineError(f"step {step.name} has not finished; run the steps before "
                                    f"{from_step or only} first")
        budget = self.spec.budget_minutes
        t0 = time.perf_counter()
        to_run = [s for s in planned if s.action == "run"]
        for k, step in enumerate(to_run, start=1):
            print(f"── step {k}/{len(to_run)}: {step.name} ({step.spec.uses}) — {step.reason}", flush=True)
            self._run_step(step)
        seconds = time.perf_counter() - t0
        self.record["seconds_last_run"] = round(seconds, 1)
        self._save_record()
        note = f" (budget {budget:g} min)" if budget else ""
        print(f"pipeline {self.path.name}: {len(to_run)} step(s) run, {len(planned) - len(to_run)} skipped, "
              f"{seconds / 60:.1f} min{note}; record: {self.record_path}", flush=True)
        return self.record

    def _run_step(self, step: Planned) -> None:
        from pathgen import __version__

        if step.fresh and step.dir.exists() and self.is_leader:
            shutil.rmtree(step.dir)
        step.dir.mkdir(parents=True, exist_ok=True)
        log = self.run_dir / "logs" / f"{step.name}.log"
        entry = {
            "status": "running", "uses": step.spec.uses, "fingerprint": step.fingerprint,
            "with": step.params.model_dump(mode="json"),
            "config": step.config.model_dump(mode="json") if step.config is not None else None,
            "consumed": step.consumed, "outputs": step.outputs, "pathgen_version": __version__,
            "started": _now(), "log": str(log),
        }
        self.record["steps"][step.name] = entry
        self._save_record()
        t0 = time.perf_counter()
        try:
            with step_log(log):
                self._execute(step)
            missing = [k for k, p in step.outputs.items() if not Path(p).exists()]
            if missing:
                raise PipelineError(f"finished without writing its output(s) {', '.join(missing)}")
        except KeyboardInterrupt:
            entry.update(status="interrupted", seconds=round(time.perf_counter() - t0, 1))
            self._save_record()
            raise
        except Exception as err:  # noqa: BLE001 - any failure stops the pipeline with one line and the log
            reason = str(err) if isinstance(err, PathgenError) else f"{type(err).__name__}: {err}"
            reason = " ".join(reason.split())[:500]
            entry.update(status="failed", error=reason, seconds=round(time.perf_counter() - t0, 1))
            self._save_record()
            if not isinstance(err, PathgenError):
                import traceback

                with open(log, "a", encoding="utf-8") as f:
                    traceback.print_exception(err, file=f)
            raise PipelineError(f"step {step.name} failed: {reason} (log: {log})") from None
        entry.update(status="done", finished=_now(), seconds=round(time.perf_counter() - t0, 1))
        self._save_record()

    def _execute(self, step: Planned) -> None:
        ctx = StepContext(step.name, step.dir, step.params, step.config)
        if step.spec.gpus == 1 and step.spec.nodes == 1:
            step.stage.run(ctx)
            return
        if not step.stage.cli:
            raise PipelineError(f"stage {step.spec.uses} cannot run on several GPUs or nodes")
        cmd = launch_command(step, self.run_dir / "logs")
        print("launch: " + " ".join(cmd), flush=True)
        # a pipe, not the terminal: its progress comes as lines, copied here to the terminal and the step log
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        last = ""
        for line in proc.stdout:
            sys.stdout.write(line)
            last = line.strip() or last
        if proc.wait() != 0:
            raise PipelineError(f"torchrun exited with status {proc.returncode}: {last}")


def node_rank() -> int:
    """This machine's rank in a multi-node job: NODE_RANK, or SLURM_NODEID under srun; 0 otherwise."""
    return int(os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", "0")) or 0)


def launch_command(step: Planned, folder: Path) -> list[str]:
    """The torchrun command of a training step on `gpus` processes per node over `nodes` nodes.

    The resolved config is written to `folder` (one file per node, outside the step folder that node 0 may be
    clearing), so every process reads the same settings. Across nodes, the rendezvous endpoint comes from
    MASTER_ADDR / MASTER_PORT, as a SLURM script sets them, and this node's rank from NODE_RANK or SLURM_NODEID
    (see pipelines/slurm/).
    """
    from pathgen.config import save_config

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{step.name}.config.node{node_rank()}.yaml"
    save_config(step.config, config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(step.spec.gpus)]
    if step.spec.nodes > 1:
        addr = os.environ.get("MASTER_ADDR")
        rank = os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID"))
        if not addr or rank is None:
            raise PipelineError(f"step {step.name}: nodes {step.spec.nodes} needs MASTER_ADDR and NODE_RANK (or "
                                "SLURM_NODEID) set on every node; see pipelines/slurm/train_multinode.sh")
        cmd += ["--nnodes", str(step.spec.nodes), "--node_rank", rank, "--rdzv_backend", "c10d",
                "--rdzv_endpoint", f"{addr}:{os.environ.get('MASTER_PORT', '29500')}"]
    else:
        cmd += ["--standalone"]
    return [*cmd, "-m", "pathgen", *step.stage.cli, "--config", str(config), "--resume", "auto"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def print_plan(planned: list[Planned]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("step", "stage", "action", "why")
    for step in planned:
        table.add_row(step.name, step.spec.uses, step.action, step.reason)
    Console(width=None if sys.stdout.isatty() else 160).print(table)
