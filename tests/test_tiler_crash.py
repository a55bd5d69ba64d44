"""A worker process that dies (OOM killer, segfault) fails only the slide it was working on; the cohort finishes.
Also what runs where: the forkserver's preload, and the parent leaving slides and morphology to the workers.

The dying functions below replace the tiler's task functions in the parent; the pool pickles them by reference,
so each worker imports this module and runs them, and they call the real task for every other slide.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pathgen.slide.tiler as tiler
import pathgen.store.writer as store_writer
from pathgen.store import open_store, read_manifest

_READ_CHUNK, _PLAN_TASK = tiler.read_chunk, tiler.plan_task  # the real ones, in the parent and in every worker


def _read_chunk_killed_on_victim(task):
    if Path(task.slide).stem == "victim":
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does
    return _READ_CHUNK(task)


def _plan_task_exiting_on_victim(task):
    if task.job.name == "victim":
        os._exit(3)  # a native library bailing out
    return _PLAN_TASK(task)


@pytest.fixture
def cohort(demo_slides, tmp_path, monkeypatch):
    """a, victim, z (in that order), in chunks of 8 patches: other slides' chunks are in flight when it dies."""
    monkeypatch.setattr(store_writer, "SHARD_BYTES", 32 * 32 * 3 * 8)
    folder = tmp_path / "slides"
    folder.mkdir()
    for src, name in zip(demo_slides, ("a", "victim", "z"), strict=False):
        shutil.copy(src, folder / f"{name}.svs")
    return folder


@pytest.mark.slow  # ~6-12 s each: a pool of 2, rebuilt twice
@pytest.mark.parametrize(
    "name, fake, reason",
    [
        ("read_chunk", _read_chunk_killed_on_victim,
         r"worker process was killed by SIGKILL \(out of memory\?\) while reading patches \d+-\d+, twice"),
        ("plan_task", _plan_task_exiting_on_victim,
         r"worker process exited with status 3 while planning the slide, twice"),
    ],
)  # fmt: skip
def test_a_dying_worker_fails_only_its_slide(cohort, tmp_path, monkeypatch, capsys, name, fake, reason):
    monkeypatch.setattr(tiler, name, fake)
    manifest = tiler.tile_cohort([cohort], tmp_path / "out", mpp=0.5, patch_size=32, workers=2)
    rows = {Path(r.slide).stem: r for r in read_manifest(manifest)}
    assert rows["victim"].status == "failed" and rows["victim"].store == ""
    assert re.fullmatch(reason, rows["victim"].error), rows["victim"].error
    for stem, row in rows.items():
        if stem != "victim":
            assert row.status == "ok" and row.n_patches > 0, stem
            with open_store(tmp_path / "out" / row.store) as store:
                assert len(store) == row.n_patches and store.read(range(len(store))).shape[0] == row.n_patches
    assert not list((tmp_path / "out").glob("*.tmp-*"))
    assert "retrying" in capsys.readouterr().err


POOL_SCRIPT = """
import sys
from pathgen.slide.pool import WorkerPool

def loaded(name):
    return name in sys.modules

if __name__ == "__main__":
    pool = WorkerPool(1, preload=sys.argv[1:])
    print(pool.submit(loaded, "colorsys").result(), pool.submit(loaded, "pathgen.slide.pool").result())
    pool.close()
"""


@pytest.mark.parametrize("preload", [[], ["colorsys"]])
def test_pool_workers_start_with_the_preloaded_modules(tmp_path, preload):
    """The forkserver imports `preload` once; workers forked from it have them without importing them."""
    script = tmp_path / "pool_script.py"
    script.write_text(POOL_SCRIPT)
    out = subprocess.run([sys.executable, str(script), *preload], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(bool(preload)), "True"]


PARENT_SCRIPT = """
import sys
from pathgen.slide.tiler import tile_cohort

if __name__ == "__main__":
    tile_cohort(sys.argv[1], sys.argv[2], mpp=0.5, patch_size=32, workers=1)
    print(sorted(m for m in ("scipy.ndimage", "openslide", "tifffile") if m in sys.modules))
"""


def test_the_parent_leaves_slides_and_morphology_to_the_workers(demo_slide, tmp_path):
    """Planning (scipy.ndimage's morphology, the tissue contours' GeoJSON) and reading happen in the workers: the
    parent never imports scipy.ndimage (~0.5 s of CPU that competed with the workers reading) nor a slide reader."""
    script = tmp_path / "parent_script.py"
    script.write_text(PARENT_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(demo_slide), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.split() == ["[]"]
    assert (tmp_path / "out" / "qc" / f"{demo_slide.stem}.geojson").is_file()
