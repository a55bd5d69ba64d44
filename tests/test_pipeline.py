"""`pathgen run`: plans, fingerprints and reruns, failures, resume of a killed step, torchrun launches, step logs."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.errors import ConfigError
from pathgen.pipeline.runner import Pipeline, PipelineError, launch_command
from pathgen.pipeline.steplog import ScreenLog

PIPELINE = """
out: run
steps:
  cohort:
    uses: demo-cohort
    with: {n_slides: 2, width: 512, height: 384}
  tile:
    uses: tile
    with: {slides: ["${cohort.labels}"], mpp: 0.5, patch_size: 32, workers: 1}
"""


@pytest.fixture
def pipeline_file(tmp_path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    return path


def _plan(pipe: Pipeline, **kw) -> dict[str, tuple[str, str]]:
    return {s.name: (s.action, s.reason) for s in pipe.plan(**kw)}


def test_runs_records_and_skips_unchanged_steps_then_reruns_what_changed(pipeline_file, tmp_path):
    out = tmp_path / "run"
    Pipeline(pipeline_file, out).run()
    record = json.loads((out / "pipeline.json").read_text())
    tile = record["steps"]["tile"]
    assert tile["status"] == "done" and tile["with"]["patch_size"] == 32 and tile["pathgen_version"]
    assert tile["consumed"] == {"cohort.labels": record["steps"]["cohort"]["fingerprint"]}
    # the log holds the tiler's progress lines (one per slide), then its summary
    assert Path(tile["outputs"]["manifest"]).is_file() and "\nslides: 2  ok: 2" in Path(tile["log"]).read_text()

    assert {a for a, _ in _plan(Pipeline(pipeline_file, out)).values()} == {"skip"}
    store_mtime = (out / "tile" / "slide_000.zarr").stat().st_mtime_ns
    changed = _plan(Pipeline(pipeline_file, out, ("tile.patch_size=16",)))
    assert changed["cohort"][0] == "skip" and changed["tile"] == ("run", "changed: setting patch_size")
    upstream = _plan(Pipeline(pipeline_file, out, ("cohort.seed=1",)))
    assert upstream["cohort"] == ("run", "changed: setting seed")
    assert upstream["tile"] == ("run", "changed: input cohort.labels")  # downstream of a changed step
    Pipeline(pipeline_file, out).run()  # nothing to do: nothing is touched
    assert (out / "tile" / "slide_000.zarr").stat().st_mtime_ns == store_mtime
    forced = _plan(Pipeline(pipeline_file, out), from_step="tile")
    assert forced == {"cohort": ("skip", "before tile"), "tile": ("run", "--from")}
    assert _plan(Pipeline(pipeline_file, out), only="tile")["tile"][0] == "skip"  # --only: just if needed
    assert _plan(Pipeline(pipeline_file, out), until_step="cohort")["tile"] == ("not run", "after --until cohort")


def test_a_killed_step_resumes_in_its_folder_and_a_changed_one_starts_clean(pipeline_file, tmp_path):
    out = tmp_path / "run"
    Pipeline(pipeline_file, out).run()
    record = json.loads((out / "pipeline.json").read_text())
    record["steps"]["tile"]["status"] = "running"  # what a kill during the step leaves behind
    (out / "pipeline.json").write_text(json.dumps(record))
    (out / "tile" / "partial-work").write_text("kept")
    pipe = Pipeline(pipeline_file, out)
    assert _plan(pipe)["tile"] == ("run", "running: resumes in its folder")
    pipe.run()
    assert (out / "tile" / "partial-work").is_file()  # the stage's own resume decides what to redo
    Pipeline(pipeline_file, out, ("tile.patch_size=16",)).run()
    assert not (out / "tile" / "partial-work").exists()


def test_a_failing_step_stops_the_pipeline_naming_step_reason_and_log(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.replace('["${cohort.labels}"]', '["missing.csv"]') + """
  after:
    uses: tile
    with: {slides: ["${tile.manifest}"]}
""")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    log = tmp_path / "run" / "logs" / "tile.log"
    assert result.exit_code == 1
    assert f"error: step tile failed: missing.csv: no such slide, folder or slide list (log: {log})" in result.output
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert record["steps"]["tile"]["status"] == "failed" and "after" not in record["steps"]


@pytest.mark.parametrize("override, message", [
    ("tile.patchsize=3", "steps.tile.with.patchsize: unknown key"),
    ("tile.uses=nope", "steps.tile.uses: unknown stage 'nope'"),
    ("steps.cohort.bogus=1", "steps.cohort.bogus: unknown key"),
])
def test_unknown_keys_and_bad_values_are_one_line_errors_naming_file_and_key(pipeline_file, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        Pipeline(pipeline_file, None, (override,)).plan()
    assert str(pipeline_file) in str(err.value) and "\n" not in str(err.value)


def test_references_must_name_an_earlier_step_and_one_of_its_outputs(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.replace("${cohort.labels}", "${cohort.nope}"))
    with pytest.raises(ConfigError, match=r"\$\{cohort.nope\}: step cohort has outputs labels"):
        Pipeline(path)
    path.write_text(PIPELINE.replace("${cohort.labels}", "${tile.manifest}"))
    with pytest.raises(ConfigError, match="refers to a later step"):
        Pipeline(path)


def test_training_steps_on_several_gpus_or_nodes_launch_under_torchrun(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE + """
  ssl:
    uses: pretrain-ssl
    config: tiny.yaml
    overrides: ["data.sources=[${tile.manifest}]"]
    gpus: 4
""")
    (tmp_path / "tiny.yaml").write_text("optim: {epochs: 1}\n")  # found beside the pipeline file
    pipe = Pipeline(path, tmp_path / "run")
    ssl = pipe.plan()[-1]
    logs = tmp_path / "run" / "logs"
    cmd = launch_command(ssl, logs)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone"]
    assert cmd[6:] == ["-m", "pathgen", "pretrain", "ssl", "--config", str(logs / "ssl.config.node0.yaml"),
                       "--resume", "auto"]
    config = (logs / "ssl.config.node0.yaml").read_text()
    assert "epochs: 1" in config and str(tmp_path / "run" / "tile" / "manifest.csv") in config
    assert f"out_dir: {tmp_path / 'run' / 'ssl'}" in config
    ssl.spec.nodes = 2
    with pytest.raises(PipelineError, match="needs MASTER_ADDR"):
        launch_command(ssl, logs)
    monkeypatch.setenv("MASTER_ADDR", "node01")
    monkeypatch.setenv("SLURM_NODEID", "1")
    cmd = launch_command(ssl, logs)
    assert cmd[5:15] == ["--nnodes", "2", "--node_rank", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                         "node01:29500", "-m", "pathgen"]


def test_step_log_keeps_what_the_terminal_finally_showed(tmp_path):
    log = ScreenLog(tmp_path / "s.log")
    log.write("start\n")
    for i in range(1000):  # a tqdm bar redrawing itself with carriage returns
        log.write(f"\rbar {i}/999")
    log.write("\n")
    log.write("\x1b[?25lslide 1  10%\nslide 2   5%\n")  # a rich live display: 2 lines, then redrawn in place
    for i in range(50):
        log.write(f"\r\x1b[2K\x1b[1A\x1b[2K\x1b[1A\x1b[2Kslide 1 {i}%\nslide 2 {i}%\n")
    log.write("done\n")
    log.close()
    assert (tmp_path / "s.log").read_text().splitlines() == ["start", "bar 999/999", "slide 1 49%", "slide 2 49%",
                                                              "done"]


@pytest.mark.slow
def test_a_two_process_training_step_runs_under_torchrun_on_cpu(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_ddp import TINY
    from test_ssl_train import make_toy_folder

    toy = make_toy_folder(tmp_path / "toy", n_per_class=16)
    overrides = ", ".join(f'"{o}"' for o in [f"data.sources=[{toy}]", "data.batch_size=8", *TINY])
    path = tmp_path / "p.yaml"
    path.write_text(f"steps:\n  ssl:\n    uses: pretrain-ssl\n    overrides: [{overrides}]\n    gpus: 2\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    record = Pipeline(path, tmp_path / "run").run()
    assert record["steps"]["ssl"]["status"] == "done"
    log = (tmp_path / "run" / "logs" / "ssl.log").read_text()
    assert "launch: " in log and "--nproc_per_node 2" in log and "2 process(es)" in log
    assert (tmp_path / "run" / "ssl" / "encoder.safetensors").is_file()


SLURM = Path(__file__).resolve().parents[1] / "pipelines" / "slurm"


@pytest.mark.parametrize("script", sorted(SLURM.glob("*.sh")), ids=lambda p: p.name)
def test_slurm_scripts_are_valid_bash(script):
    import subprocess

    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_the_multinode_script_runs_only_its_step_on_each_node(tmp_path):
    import os
    import subprocess

    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE + "  ssl:\n    uses: pretrain-ssl\n    overrides: ['data.sources=[${tile.manifest}]']\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SRUN": "",
           "SLURM_NNODES": "2", "SLURM_GPUS_PER_NODE": "4", "SLURM_NODEID": "1", "MASTER_ADDR": "node01",
           "PATHGEN_RUN_ARGS": "--plan", "COLUMNS": "200"}
    result = subprocess.run(["bash", str(SLURM / "train_multinode.sh"), str(path), str(tmp_path / "run"), "ssl"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert "never run" in rows["ssl"] and "NOT done" in rows["tile"]  # this run would refuse: tile is not done
