"""The demo cohort: real Aperio SVS files OpenSlide reads, balanced labels, lesions seen only by their morphology."""

import csv

import numpy as np
import openslide
import pytest
from PIL import Image
from scipy import ndimage
from skimage import color

from pathgen.pipeline.demo_cohort import SyntheticSlide, cohort_slide_seeds, make_demo_cohort, write_svs
from pathgen.pipeline.demo_tissue import Stain, stain_maps


def _rows(labels_csv):
    with labels_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def _nucleus_area(rgb: np.ndarray, where: np.ndarray) -> float:
    """Mean area (px) of the haematoxylin blobs (nuclei, filled) lying wholly inside `where`."""
    h = color.rgb2hed(rgb)[..., 0]
    blobs, n = ndimage.label(ndimage.binary_fill_holes(h > h[where].mean() + 0.5 * h[where].std()))
    areas = np.bincount(blobs.ravel(), minlength=n + 1)[1:]
    inside = ndimage.minimum(where, blobs, index=np.arange(1, n + 1)).astype(bool)
    return float(areas[inside & (areas >= 3)].mean())


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


def test_positive_slides_hold_lesions_that_differ_by_morphology_not_colour(demo_cohort):
    """Lesions cover part of each positive slide's tissue (ground truth); their nuclei are far larger, yet their
    pixels' colours are distributed as the normal tissue's."""
    for row, seed in zip(_rows(demo_cohort), cohort_slide_seeds(0, 4), strict=True):
        with openslide.OpenSlide(str(demo_cohort.parent / row["slide"])) as osr:
            rgb = np.asarray(osr.read_region((0, 0), 0, osr.dimensions).convert("RGB"))
        synth = SyntheticSlide(*rgb.shape[1::-1], seed=seed, positive=row["label"] == "positive")
        tissue = synth.tissue_mask(0, 0, *rgb.shape[1::-1]) > 0.99
        lesion = (synth.lesion_mask(0, 0, *rgb.shape[1::-1]) > 0.99) & tissue
        if row["label"] == "negative":
            assert not synth.lesions and not lesion.any()
            continue
        assert 0.02 < lesion.sum() / tissue.sum() < 0.6
        normal = tissue & (synth.lesion_mask(0, 0, *rgb.shape[1::-1]) == 0)
        assert _nucleus_area(rgb, lesion) > 2 * _nucleus_area(rgb, normal)
        # about the same colour (the regions sample the slide's uneven staining differently: a few grey levels)
        assert np.abs(rgb[lesion].mean(0) - rgb[normal].mean(0)).max() < 10
        assert np.abs(rgb[lesion].std(0) - rgb[normal].std(0)).max() < 10


def test_every_morphology_has_the_same_stain_and_colour_distribution():
    maps = stain_maps(11)
    q = np.linspace(0.01, 0.99, 50)
    reference = [np.quantile(m, q) for m in maps["epithelium"]]
    rendered = {name: Stain(1.1, 0.9, (0.97, 0.95, 1.0)).render(*hm) for name, hm in maps.items()}
    for name, (h, e) in maps.items():
        np.testing.assert_allclose(np.quantile(h, q), reference[0], atol=0.01)
        np.testing.assert_allclose(np.quantile(e, q), reference[1], atol=0.01)
        for c in range(3):
            np.testing.assert_allclose(np.quantile(rendered[name][..., c], q),
                                       np.quantile(rendered["epithelium"][..., c], q), atol=2)
    # and yet the textures differ: lesion nuclei are larger than the epithelium's
    assert _nucleus_area(rendered["lesion"], np.ones(h.shape, bool)) > 2 * _nucleus_area(
        rendered["epithelium"], np.ones(h.shape, bool))


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
