"""The demo cohort: real Aperio SVS files OpenSlide reads, balanced labels, a visible positive class."""

import csv

import numpy as np
import openslide
import pytest
from PIL import Image
from skimage import color

from pathgen.pipeline.demo_cohort import SyntheticSlide, make_demo_cohort, make_demo_patches, write_svs


def _rows(labels_csv):
    with labels_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def _lesion_fraction(rgb: np.ndarray) -> float:
    """Share of pixels in the lesion texture's colour: purple-violet hue, clearly saturated."""
    hsv = color.rgb2hsv(rgb)
    return float(((hsv[..., 0] > 0.65) & (hsv[..., 0] < 0.8) & (hsv[..., 1] > 0.3)).mean())


def test_cohort_files_and_balanced_labels(demo_cohort):
    rows = _rows(demo_cohort)
    assert [r["slide"] for r in rows] == [f"slides/slide_{i:03d}.svs" for i in range(4)]
    assert sorted(r["label"] for r in rows) == ["negative", "negative", "positive", "positive"]
    for r in rows:
        assert (demo_cohort.parent / r["slide"]).is_file()
    # no temporary levels or partial files left behind
    assert sorted(p.name for p in (demo_cohort.parent / "slides").iterdir()) == [f"slide_{i:03d}.svs" for i in range(4)]


def test_openslide_reads_aperio_metadata(demo_slides):
    for path in demo_slides:
        assert openslide.OpenSlide.detect_format(str(path)) == "aperio"
        with openslide.OpenSlide(str(path)) as osr:
            assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
            assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(0.25)
            assert float(osr.properties["openslide.objective-power"]) == pytest.approx(40)
            assert osr.level_count == 2 and osr.dimensions == (1024, 768)
            assert osr.properties["tiff.ImageDescription"].startswith("Aperio")
            thumb = np.asarray(osr.associated_images["thumbnail"].convert("RGB"))
            assert 150 < thumb.mean() < 250 and thumb.std() > 10  # a real overview, not an unfilled buffer


def test_positive_slides_hold_the_second_texture(demo_cohort):
    for row in _rows(demo_cohort):
        with openslide.OpenSlide(str(demo_cohort.parent / row["slide"])) as osr:
            level1 = np.asarray(osr.read_region((0, 0), 1, osr.level_dimensions[1]).convert("RGB"))
        frac = _lesion_fraction(level1)
        if row["label"] == "positive":
            assert 0.01 < frac < 0.3, frac  # small regions, not the whole slide
        else:
            assert frac < 0.001, frac


def test_same_seed_same_pixels_other_seed_different(tmp_path):
    a = make_demo_cohort(tmp_path / "cohort ä", n_slides=2, seed=7, width=384, height=256)  # non-ASCII path
    b = make_demo_cohort(tmp_path / "b", n_slides=2, seed=7, width=384, height=256)
    c = make_demo_cohort(tmp_path / "c", n_slides=2, seed=8, width=384, height=256)

    def pixels(labels):
        with openslide.OpenSlide(str(labels.parent / "slides" / "slide_000.svs")) as osr:
            return np.asarray(osr.read_region((0, 0), 0, osr.dimensions))

    assert a.read_text() == b.read_text()
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_write_svs_streams_tiles_and_levels_match(tmp_path):
    """Odd sizes (partial edge tiles) and 3 levels; every level is the level-0 content, reduced."""
    synth = SyntheticSlide(1100, 700, seed=1, positive=True)
    calls = []

    def tile_fn(x, y, w, h):
        calls.append((w, h))
        return synth.tile(x, y, w, h)

    path = tmp_path / "odd.svs"
    write_svs(path, 1100, 700, tile_fn, mpp=0.5, magnification=20, tile_size=64)
    assert max(w * h for w, h in calls) <= 64 * 64  # level 0 was never rendered whole
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.level_dimensions == ((1100, 700), (275, 175), (69, 44))
        assert float(osr.properties["openslide.mpp-x"]) == 0.5
        level0 = np.asarray(osr.read_region((0, 0), 0, (1100, 700)).convert("RGB")).astype(int)
        level1 = np.asarray(osr.read_region((0, 0), 1, (275, 175)).convert("RGB")).astype(int)
    truth = synth.tile(0, 0, 1100, 700).astype(int)
    assert np.abs(level0 - truth).mean() < 4  # JPEG q85
    reduced = np.asarray(Image.fromarray(truth.astype(np.uint8)).reduce(4)).astype(int)
    assert np.abs(level1 - reduced).mean() < 4


def test_demo_patches_image_folder(tmp_path):
    out = make_demo_patches(tmp_path / "patches", n_per_class=5, size=32, seed=0)
    for name in ("normal", "lesion"):
        files = sorted((out / name).glob("*.png"))
        assert len(files) == 5
        assert Image.open(files[0]).size == (32, 32)
    lesion = np.stack([np.asarray(Image.open(f)) for f in (out / "lesion").glob("*.png")])
    normal = np.stack([np.asarray(Image.open(f)) for f in (out / "normal").glob("*.png")])
    assert _lesion_fraction(lesion.reshape(-1, 32, 3)) > 0.5 > _lesion_fraction(normal.reshape(-1, 32, 3))
