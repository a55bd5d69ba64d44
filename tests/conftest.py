"""Shared fixtures: a tiny real demo cohort (pyramidal Aperio SVS files written by pathgen itself)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pathgen.pipeline.demo_cohort import make_demo_cohort


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """labels.csv of 4 slides (1024x768 at 0.25 mpp, 2 levels; 2 positive, 2 negative) under slides/."""
    return make_demo_cohort(tmp_path_factory.mktemp("demo_cohort"), n_slides=4, seed=0, width=1024, height=768)


@pytest.fixture(scope="session")
def demo_slides(demo_cohort) -> list[Path]:
    """Absolute paths of the demo cohort's slides, in labels.csv order."""
    with demo_cohort.open(newline="") as f:
        return [demo_cohort.parent / row["slide"] for row in csv.DictReader(f)]


@pytest.fixture(scope="session")
def demo_slide(demo_slides) -> Path:
    """One slide of the demo cohort."""
    return demo_slides[0]
