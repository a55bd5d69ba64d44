"""--roi GeoJSON in (QuPath's export), tissue contours out, --magnification, --overlap, batch-log progress, QC."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from pathgen.errors import ConfigError
from pathgen.pipeline.demo_cohort import SyntheticSlide, write_svs
from pathgen.slide.annotations import rasterize, read_annotations, tissue_geojson
from pathgen.slide.tiler import tile_cohort
from pathgen.store import open_store, read_manifest

TILE = dict(mpp=0.5, patch_size=32, workers=0)


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(geometry, name=None):
    props = {"objectType": "annotation"}
    if name:
        props["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _store(path):
    with open_store(path) as store:
        return store.coords.copy(), store.labels, store.attrs


def test_roi_restricts_patches_and_names_their_labels(demo_slide, tmp_path):
    """Two classified regions, one with a hole, as QuPath exports them (level-0 pixel coordinates)."""
    tumour = {"type": "Polygon", "coordinates": [_rect(0, 0, 512, 384), _rect(128, 128, 256, 256)]}
    stroma = {"type": "MultiPolygon", "coordinates": [[_rect(512, 384, 1024, 768)]]}
    roi = tmp_path / "roi"
    roi.mkdir()
    (roi / f"{demo_slide.stem}.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "features": [_feature(tumour, "Tumor"), _feature(stroma, "Stroma")]}))  # fmt: skip
    tile_cohort([demo_slide], tmp_path / "all", tissue_threshold=0.0, **TILE)
    tile_cohort([demo_slide], tmp_path / "roi_out", tissue_threshold=0.0, roi=roi, **TILE)
    everything, _, _ = _store(tmp_path / "all" / f"{demo_slide.stem}.zarr")
    coords, labels, attrs = _store(tmp_path / "roi_out" / f"{demo_slide.stem}.zarr")
    assert attrs["classes"] == ["Stroma", "Tumor"] and attrs["roi_path"].endswith(".geojson")
    x, y = coords[:, 0] + 32, coords[:, 1] + 32  # patch centres (64 level-0 px a side)
    in_tumour = (x < 512) & (y < 384) & ~((x > 128) & (x < 256) & (y > 128) & (y < 256))
    in_stroma = (x > 512) & (y > 384)
    assert (in_tumour | in_stroma).all() and in_tumour.any() and in_stroma.any()
    np.testing.assert_array_equal(labels, np.where(in_tumour, 1, 0))
    assert len(coords) == (in_tumour | in_stroma).sum() < len(everything)

    def rerun() -> str:
        return read_manifest(tile_cohort([demo_slide], tmp_path / "roi_out", tissue_threshold=0.0, roi=roi, **TILE))[
            0
        ].status

    assert rerun() == "skipped"
    annotations = roi / f"{demo_slide.stem}.geojson"
    os.utime(annotations, (annotations.stat().st_atime, annotations.stat().st_mtime + 10))  # edited in QuPath
    assert rerun() == "ok"

    missing = tmp_path / "empty_roi"
    missing.mkdir()
    rows = read_manifest(tile_cohort([demo_slide], tmp_path / "m", roi=missing, **TILE))
    assert rows[0].status == "failed" and f"no {demo_slide.stem}.geojson" in rows[0].error
    with pytest.raises(ConfigError, match="folder"):
        tile_cohort([demo_slide], tmp_path / "x", roi=tmp_path / "nope", **TILE)


def test_tissue_contours_come_out_as_qupath_geojson_and_go_back_in(demo_slide, tmp_path):
    tile_cohort([demo_slide], tmp_path / "first", **TILE)
    contours = tmp_path / "first" / "qc" / f"{demo_slide.stem}.geojson"
    data = json.loads(contours.read_text())
    assert data["type"] == "FeatureCollection" and data["features"]
    for feature in data["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["classification"]["name"] == "Tissue"
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all() and (ring >= 0).all() and (ring <= [1024, 768]).all()
    # Fed back unchanged with --roi, the contours are the tissue: the same patches.
    tile_cohort([demo_slide], tmp_path / "second", roi=tmp_path / "first" / "qc", **TILE)
    first, _, _ = _store(tmp_path / "first" / f"{demo_slide.stem}.zarr")
    second, labels, attrs = _store(tmp_path / "second" / f"{demo_slide.stem}.zarr")
    np.testing.assert_array_equal(first, second)
    assert labels is None and "classes" not in attrs


def test_contours_rasterize_back_to_the_mask():
    rng = np.random.default_rng(0)
    mask = np.zeros((60, 80), bool)
    mask[5:40, 10:50] = True
    mask[15:25, 20:30] = False  # a hole
    mask[45:58, 60:78] = True  # a second piece
    mask[50:52, 65:67] = False
    mask ^= rng.random(mask.shape) < 0.01  # ragged edges
    back = rasterize(read_annotations_of(tissue_geojson(mask, 4.0, (100, 200))), mask.shape, 4.0, (100, 200))
    assert (back.tissue == mask).mean() > 0.99 and back.region is None


def read_annotations_of(collection, tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.geojson"
        path.write_text(json.dumps(collection))
        return read_annotations(path)


def test_bad_geojson_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.geojson: cannot read GeoJSON"):
        read_annotations(bad)
    bad.write_text(json.dumps({"type": "Point"}))
    with pytest.raises(ConfigError, match="not a GeoJSON FeatureCollection"):
        read_annotations(bad)


def test_magnification_scales_each_slide_by_its_own_objective(demo_slide, tmp_path):
    tile_cohort([demo_slide], tmp_path / "mpp", **TILE)
    tile_cohort([demo_slide], tmp_path / "mag", magnification=20, patch_size=32, workers=0)
    a, _, _ = _store(tmp_path / "mpp" / f"{demo_slide.stem}.zarr")
    b, _, attrs = _store(tmp_path / "mag" / f"{demo_slide.stem}.zarr")
    np.testing.assert_array_equal(a, b)  # 40x at 0.25 um/px: 20x is 0.5 um/px
    assert (attrs["target_mpp"], attrs["target_magnification"], attrs["tile_magnification"]) == (0.5, 20, 20)

    odd = tmp_path / "odd.svs"  # a 40x scanner at 0.2527 um/px: 20x is 0.5054 um/px, not 0.5
    write_svs(odd, 512, 384, SyntheticSlide(512, 384, seed=3).tile, mpp=0.2527, magnification=40, tile_size=128)
    no_mpp = tmp_path / "no_mpp.svs"  # no mpp at all, only the objective power: still tiled at the right scale
    write_svs(no_mpp, 512, 384, SyntheticSlide(512, 384, seed=4).tile, mpp=None, magnification=20, tile_size=128)
    tile_cohort([odd, no_mpp], tmp_path / "odd", magnification=10, patch_size=32, workers=0, coords_only=True)
    _, _, attrs = _store(tmp_path / "odd" / "odd.zarr")
    assert attrs["target_mpp"] == pytest.approx(1.0108) and attrs["target_magnification"] == 10
    _, _, attrs = _store(tmp_path / "odd" / "no_mpp.zarr")
    assert attrs["target_mpp"] == pytest.approx(1.0) and attrs["patch_size_level0"] == 64
    with pytest.raises(ConfigError, match="not both"):
        tile_cohort([demo_slide], tmp_path / "x", mpp=0.5, magnification=20)


def test_overlap_in_pixels_at_the_target_resolution(demo_slide, tmp_path):
    tile_cohort([demo_slide], tmp_path, overlap=8, tissue_threshold=0.0, coords_only=True, **TILE)
    coords, _, attrs = _store(tmp_path / f"{demo_slide.stem}.zarr")
    xs = np.unique(coords[:, 0])
    assert set(np.diff(xs)) == {48}  # 32 - 8 = 24 target px = 48 level-0 px apart, each patch 64 wide
    assert len(xs) == (1024 - 64) // 48 + 1
    assert attrs["overlap"] == 8
    import zarr

    coords_attrs = zarr.open_group(tmp_path / f"{demo_slide.stem}.zarr", mode="r")["coords"].attrs
    assert coords_attrs["overlap"] == 16  # TRIDENT's frame: pixels of the 64 px read at level 0
    with pytest.raises(ConfigError, match="overlap"):
        tile_cohort([demo_slide], tmp_path / "x", overlap=32, **TILE)


def test_progress_is_plain_lines_in_a_batch_log(demo_slides, tmp_path, capsys, monkeypatch):
    """No terminal (SLURM): a line per slide, and progress lines with patches/s, never carriage returns."""
    monkeypatch.setenv("PATHGEN_PROGRESS_SECONDS", "0")
    tile_cohort(demo_slides[:2], tmp_path, **TILE)
    err = capsys.readouterr().err
    assert "\r" not in err
    for s in demo_slides[:2]:
        assert re.search(rf"^{s.stem}: ok: \d+ patches in [\d.]+ s \(\d+ patches/s\) \[\d/2\]$", err, re.M), err
    assert re.search(r"^tile: \d+patch \[[\d:]+, [\d.]+patch/s, slides 2/2\]$", err, re.M), err


def test_qc_picture_shows_roi_and_pen_in_their_own_colours(tmp_path):
    from pathgen.slide.grid import PatchPlan
    from pathgen.slide.qc import LEGEND_HEIGHT, PEN_COLOUR, ROI_COLOUR, render_qc

    thumb = np.full((300, 400, 3), 240, np.uint8)
    tissue, pen, roi = (np.zeros((75, 100), bool) for _ in range(3))
    tissue[10:60, 10:60] = True
    pen[20:30, 70:95] = True
    roi[5:70, 5:70] = True
    plan = PatchPlan(np.array([[40, 40]]), np.ones(1, np.float32), 0, 16, 16, 16, 0.5)
    render_qc(thumb, tissue, plan, 1.0, tmp_path / "qc.png", pen=pen, roi=roi)
    img = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB")).astype(int)
    picture, legend = img[:300], img[300:]
    assert legend.shape[0] == LEGEND_HEIGHT
    assert (picture == ROI_COLOUR).all(-1).sum() > 200  # the ROI outline
    shaded = picture[85:115, 300:370]  # the pen, shaded half way to magenta
    assert np.abs(shaded - (np.array(PEN_COLOUR) + 240) / 2).max() <= 1
    for colour in (ROI_COLOUR, PEN_COLOUR):  # both are in the legend
        assert (legend == colour).all(-1).sum() >= 50
