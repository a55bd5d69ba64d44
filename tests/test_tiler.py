"""Cohort tiling: resume, bad inputs, empty slides, shards, CSV lists, odd paths, workers."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import pathgen.store.writer as store_writer
from pathgen.errors import ConfigError
from pathgen.pipeline.demo_cohort import make_blank_slide
from pathgen.slide.tiler import list_slides, parse_shard, tile_cohort
from pathgen.store import find_stores, open_store, read_manifest

TILE = dict(mpp=0.5, patch_size=32, workers=0)  # workers=0: in this process (the pool is tested on its own)


def _rows(manifest: Path) -> dict[str, object]:
    return {Path(r.slide).name: r for r in read_manifest(manifest)}


def test_cohort_then_resume_after_simulated_kill(demo_cohort, tmp_path):
    out = tmp_path / "out"
    manifest = tile_cohort([demo_cohort], out, **TILE)
    first = _rows(manifest)
    assert [r.status for r in first.values()] == ["ok"] * 4
    assert (out / "summary.txt").read_text().startswith("slides: 4  ok: 4")
    assert all((out / "qc" / f"{Path(name).stem}.png").exists() for name in first)
    assert len(find_stores(manifest)) == 4

    # Simulate a kill: one slide's store is gone, a dead process left its temp store behind,
    # and another store was renamed into place without ever being finished.
    stores = sorted(out.glob("*.zarr"))
    shutil.rmtree(stores[0])
    stale = out / f"{stores[0].name}.tmp-999999999"
    shutil.copytree(stores[1], stale)
    with open_store(stores[2]) as s:
        n2 = len(s)
    import zarr

    zarr.open_group(stores[2], mode="r+").attrs["complete"] = False
    second = _rows(tile_cohort([demo_cohort], out, **TILE))
    assert [second[p.name.replace(".zarr", ".svs")].status for p in stores] == ["ok", "skipped", "ok", "skipped"]
    assert not stale.exists()
    assert second[stores[2].name.replace(".zarr", ".svs")].n_patches == n2
    assert all(len(open_store(p)) == first[p.name.replace(".zarr", ".svs")].n_patches for p in stores)

    # Changing a tiling parameter or --overwrite redoes everything.
    assert {r.status for r in _rows(tile_cohort([demo_cohort], out, overwrite=True, **TILE)).values()} == {"ok"}


def test_resume_after_real_kill(demo_slides, tmp_path):
    """SIGKILL `pathgen tile` while it writes; nothing left behind may look finished, and a rerun completes."""
    out = tmp_path / "out"
    slides = demo_slides[:2]
    cmd = [sys.executable, "-c", "from pathgen.cli import app; app()", "tile", *map(str, slides)]
    cmd += ["--out", str(out), "--mpp", "0.25", "--patch-size", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("*.tmp-*")):
        time.sleep(0.01)
    started = bool(list(out.glob("*.tmp-*")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert started, "the tiler never started writing"
    for store in out.glob("*.zarr"):  # whatever was renamed into place before the kill is complete
        with open_store(store) as s:
            assert s.attrs["complete"] is True
    rows = _rows(tile_cohort(slides, out, mpp=0.25, patch_size=32))
    assert {r.status for r in rows.values()} <= {"ok", "skipped"} and len(rows) == 2
    assert not list(out.glob("*.tmp-*"))
    assert len(find_stores(out)) == 2


def test_bad_files_fail_with_reason_and_others_carry_on(demo_slide, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(demo_slide, slides / "good.svs")
    (slides / "notes.svs").write_text("this is not a slide\n")
    data = demo_slide.read_bytes()
    (slides / "truncated.svs").write_bytes(data[: len(data) // 3])
    (slides / "empty.tiff").write_bytes(b"")
    rows = _rows(tile_cohort([slides], tmp_path / "out", **TILE))
    assert rows["good.svs"].status == "ok" and rows["good.svs"].n_patches > 0
    for name in ("notes.svs", "truncated.svs", "empty.tiff"):
        assert rows[name].status == "failed", name
        assert rows[name].error and "\n" not in rows[name].error and rows[name].store == ""
    assert "failed: 3" in (tmp_path / "out" / "summary.txt").read_text()
    assert sorted(p.name for p in find_stores(tmp_path / "out")) == ["good.zarr"]


def test_output_inside_the_slide_folder_is_not_tiled(tmp_path):
    blank = make_blank_slide(tmp_path / "blank.svs", width=512, height=384)
    for _ in range(2):  # the rerun must not pick up out/qc/blank.png as a slide
        rows = _rows(tile_cohort([tmp_path], tmp_path / "out", **TILE))
        assert list(rows) == [blank.name]


def test_empty_slide_gives_zero_patches_ok(tmp_path, capsys):
    blank = make_blank_slide(tmp_path / "blank.svs", width=512, height=384)
    rows = _rows(tile_cohort([blank], tmp_path / "out", **TILE))
    assert (rows["blank.svs"].status, rows["blank.svs"].n_patches) == ("ok", 0)
    assert "no tissue" in capsys.readouterr().err
    with open_store(tmp_path / "out" / "blank.zarr") as store:
        assert len(store) == 0 and store.read([]).shape == (0, 32, 32, 3)


def test_shards_partition_the_cohort(demo_cohort, tmp_path):
    seen = []
    for i in range(3):
        manifest = tile_cohort([demo_cohort], tmp_path, shard=(i, 3), coords_only=True, **TILE)
        assert manifest.name == f"manifest.shard-{i}-of-3.csv"
        seen += [r.slide for r in read_manifest(manifest)]
    assert sorted(seen) == sorted(str(j.path) for j in list_slides([demo_cohort]))
    assert len(find_stores(str(tmp_path / "manifest.shard-*.csv"))) == 4
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def test_csv_list_with_mpp_column_and_odd_paths(demo_slide, tmp_path):
    odd = tmp_path / "dir with space" / "slïde ü 1.svs"
    odd.parent.mkdir()
    shutil.copy(demo_slide, odd)
    image = tmp_path / "plain image.png"
    pixels = np.full((256, 256, 3), 245, np.uint8)  # glass, with a square of IHC tissue in the middle
    pixels[32:224, 32:224] = data.immunohistochemistry()[:192, :192]
    Image.fromarray(pixels).save(image)
    (tmp_path / "list.csv").write_text(f"slide,mpp\n{odd},\nplain image.png,0.5\n", encoding="utf-8")
    rows = _rows(tile_cohort([tmp_path / "list.csv"], tmp_path / "out", tissue_threshold=0.1, **TILE))
    assert rows[odd.name].status == "ok" and rows[odd.name].n_patches > 0
    assert rows["plain image.png"].status == "ok"
    with open_store(tmp_path / "out" / "plain image.zarr") as store:
        assert store.attrs["mpp_level0"] == 0.5 and store.attrs["mpp_source"] == "override"
        assert 0 < len(store) <= 64
        x, y = store.coords[0]
        np.testing.assert_array_equal(store[0], pixels[y : y + 32, x : x + 32])
    with open_store(tmp_path / "out" / "slïde ü 1.zarr") as store:
        assert Path(store.attrs["slide_path"]) == odd.resolve()

    # Without an mpp the plain image has no resolution: it fails, with a reason.
    (tmp_path / "nompp.csv").write_text("path\nplain image.png\n")
    rows = _rows(tile_cohort([tmp_path / "nompp.csv"], tmp_path / "out2", **TILE))
    assert rows["plain image.png"].status == "failed" and "mpp" in rows["plain image.png"].error.lower()
    (tmp_path / "bad.csv").write_text("file\nx.svs\n")
    with pytest.raises(ConfigError, match="bad.csv"):
        tile_cohort([tmp_path / "bad.csv"], tmp_path / "out3")


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_two_workers_give_identical_stores(demo_slides, tmp_path, monkeypatch, fmt):
    # Small shards so even these tiny slides are split into several chunks read by different workers.
    monkeypatch.setattr(store_writer, "SHARD_BYTES", 32 * 32 * 3 * 8)
    lossless = dict(fmt=fmt, codec="lossless")  # lossless: stored patches must equal fresh reads exactly
    one = _rows(tile_cohort(demo_slides[:2], tmp_path / "one", **lossless, **TILE))
    two = _rows(tile_cohort(demo_slides[:2], tmp_path / "two", **lossless, **{**TILE, "workers": 2}))
    assert {r.status for r in two.values()} == {"ok"}
    assert max(r.n_patches for r in two.values()) > 8  # at least one slide was split across workers
    for name, row in one.items():
        assert two[name].n_patches == row.n_patches
        with open_store(tmp_path / "one" / row.store) as a, open_store(tmp_path / "two" / two[name].store) as b:
            np.testing.assert_array_equal(a.coords, b.coords)
            np.testing.assert_array_equal(a.tissue_fraction, b.tissue_fraction)
            np.testing.assert_array_equal(a.read(np.arange(len(a))), b.read(np.arange(len(b))))
            _assert_patches_match_slide(a)


def _assert_patches_match_slide(store) -> None:
    """Every stored patch equals a fresh read of the slide at its coords (workers reuse their pixel buffers)."""
    from pathgen.slide import open_slide, plan_patches, read_patch

    with open_slide(store.attrs["slide_path"]) as slide:
        empty = np.zeros((1, 1), dtype=bool)
        plan = plan_patches(slide, store.attrs["target_mpp"], store.attrs["patch_size"], empty, 1.0, 0.0)
        for i, xy in enumerate(store.coords):
            np.testing.assert_array_equal(store[i], read_patch(slide, plan, xy), err_msg=f"patch {i}")


def test_missing_input_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.svs"):
        tile_cohort([tmp_path / "nope.svs"], tmp_path / "out")
    with pytest.raises(ConfigError, match="format"):
        tile_cohort([tmp_path], tmp_path / "out", fmt="tiff")
    assert os.listdir(tmp_path) in ([], ["out"])


def test_slide_mpp_is_a_fallback_and_the_csv_column_an_override(demo_slides, tmp_path):
    """A mixed cohort: --slide-mpp must not rescale slides whose metadata has an mpp; the CSV column does."""
    (tmp_path / "list.csv").write_text(f"slide,mpp\n{demo_slides[0]},\n{demo_slides[1]},0.3\n")
    rows = _rows(tile_cohort([tmp_path / "list.csv"], tmp_path / "out", slide_mpp=0.5, coords_only=True, **TILE))
    assert {r.status for r in rows.values()} == {"ok"}
    with open_store(tmp_path / "out" / f"{demo_slides[0].stem}.zarr") as store:
        assert (store.attrs["mpp_level0"], store.attrs["mpp_source"]) == (0.25, "metadata")
    with open_store(tmp_path / "out" / f"{demo_slides[1].stem}.zarr") as store:
        assert (store.attrs["mpp_level0"], store.attrs["mpp_source"]) == (0.3, "override")


def test_tissue_mask_is_sized_in_microns_and_capped():
    from pathgen.slide.planning import MASK_MAX_SIDE, mask_downsample

    assert mask_downsample(100_000, 0.25) == 32  # 8 um/px: a 256 px / 0.5 mpp patch spans 16 mask px
    assert mask_downsample(40_000, 0.5) == 16
    assert mask_downsample(1024, 0.25) == 4  # small slides get a finer mask, down to 1 um/px
    assert 1_000_000 / mask_downsample(1_000_000, 0.25) == MASK_MAX_SIDE


def test_the_mask_and_grid_cover_the_scanned_bounds_only(demo_slide, tmp_path, monkeypatch):
    """MRXS (and others) say where the scan is in openslide.bounds-*: tissue is looked for, and patches laid, there."""
    import pathgen.slide.reader as slide_reader

    bounds = (200, 100, 600, 500)
    monkeypatch.setattr(slide_reader, "_bounds", lambda props, dims: bounds)
    rows = _rows(tile_cohort([demo_slide], tmp_path, coords_only=True, tissue_threshold=0.0, **TILE))
    assert rows[demo_slide.name].n_patches == (600 // 64) * (500 // 64)  # every patch of the bounds, none beyond
    with open_store(tmp_path / f"{demo_slide.stem}.zarr") as store:
        assert store.attrs["level0_bounds"] == list(bounds)
        assert store.coords.min(0).tolist() == [200, 100]
        assert (store.coords.max(0) + 64 <= [800, 600]).all()
        assert store.attrs["tissue_mask_mpp"] == pytest.approx(1.0)


def test_bounds_properties_are_parsed_and_clipped():
    from pathgen.slide.reader import _bounds

    props = {"openslide.bounds-x": "100", "openslide.bounds-y": "50", "openslide.bounds-width": "5000",
             "openslide.bounds-height": "300"}  # fmt: skip
    assert _bounds(props, (1000, 800)) == (100, 50, 900, 300)
    assert _bounds({}, (1000, 800)) == (0, 0, 1000, 800)
    assert _bounds({**props, "openslide.bounds-x": "junk"}, (1000, 800)) == (0, 0, 1000, 800)


def test_stale_temps_are_only_this_hosts_dead_ones(demo_slide, tmp_path):
    """On shared storage another machine's temp is never ours to delete, even if its pid is free here."""
    import socket

    host = socket.gethostname()
    name = f"{demo_slide.stem}.zarr"
    theirs, dead, alive = (tmp_path / f"{name}.tmp-{h}-{p}" for h, p in
                           [("node-17", 999999999), (host, 999999999), (host, os.getppid())])  # fmt: skip
    for p in (theirs, dead, alive):
        p.mkdir()
    rows = _rows(tile_cohort([demo_slide], tmp_path, coords_only=True, **TILE))
    assert rows[demo_slide.name].status == "ok"
    assert theirs.exists() and alive.exists() and not dead.exists()
    from pathgen.store.writer import temp_path

    assert temp_path(tmp_path / name).name == f"{name}.tmp-{host}-{os.getpid()}"


def test_a_fluorescence_slide_is_refused_with_a_reason(tmp_path):
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 12, (384, 512, 3), dtype=np.uint8)  # dark background with bright labelled cells
    for y, x in rng.integers(20, 360, (40, 2)):
        dark[y : y + 8, x : x + 8] = (30, 220, 60)
    Image.fromarray(dark).save(tmp_path / "fluo.png")
    (tmp_path / "list.csv").write_text("slide,mpp\nfluo.png,0.5\n")
    rows = _rows(tile_cohort([tmp_path / "list.csv"], tmp_path / "out", **TILE))
    assert rows["fluo.png"].status == "failed" and "fluorescence" in rows["fluo.png"].error
