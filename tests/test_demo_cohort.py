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


def _patches(folder):
    return {r["path"]: (r, np.asarray(Image.open(folder / r["path"]))) for r in _rows(folder / "ground_truth.csv")}


SMALL = dict(n_slides=2, width=1024, height=768, size=32)  # 32 px at 0.5 mpp = 64 level-0 px


def test_demo_patches_image_folder_from_ground_truth(tmp_path):
    out = make_demo_patches(tmp_path / "patches", n_per_class=6, seed=0, **SMALL)
    patches = _patches(out)
    for name in ("normal", "lesion"):
        assert sorted(p.name for p in (out / name).iterdir()) == [f"{name}_{i:04d}.png" for i in range(6)]
    assert len(patches) == 12
    slides = {}
    for row, img in patches.values():
        assert img.shape == (32, 32, 3) and row["path"].startswith(row["label"] + "/")
        seed, x, y, side = (int(row[k]) for k in ("slide_seed", "x", "y", "size_level0"))
        assert side == 64
        s = slides.setdefault(seed, SyntheticSlide(1024, 768, seed=seed, positive=True))
        tissue = s.tissue_mask(x, y, side, side)
        lesion = float((s.lesion_mask(x, y, side, side) * tissue).mean())
        assert tissue.mean() >= 0.5 and lesion == pytest.approx(float(row["lesion_fraction"]), abs=1e-3)
        assert lesion >= 0.25 if row["label"] == "lesion" else lesion == 0.0


def test_demo_patches_pixels_match_labels_without_jitter(tmp_path):
    out = make_demo_patches(tmp_path / "p", n_per_class=8, seed=1, stain=(0.0, 0.0), brightness=0.0, hue=0.0, **SMALL)
    for row, img in _patches(out).values():
        frac = _lesion_fraction(img)
        if row["label"] == "lesion":  # the lesion texture shows roughly where the ground truth says
            assert frac > 0.5 * float(row["lesion_fraction"]), (row, frac)
        else:
            assert frac < 0.02, (row, frac)


def test_demo_patches_reproducible_and_stain_varies(tmp_path):
    a = _patches(make_demo_patches(tmp_path / "a", n_per_class=6, seed=3, **SMALL))
    b = _patches(make_demo_patches(tmp_path / "b", n_per_class=6, seed=3, **SMALL))
    c = _patches(make_demo_patches(tmp_path / "c", n_per_class=6, seed=4, **SMALL))
    no_jitter = dict(stain=(0, 0), brightness=0, hue=0)
    plain = _patches(make_demo_patches(tmp_path / "d", n_per_class=6, seed=3, **no_jitter, **SMALL))
    assert a.keys() == b.keys() == c.keys() == plain.keys()
    for k in a:
        np.testing.assert_array_equal(a[k][1], b[k][1])
        assert a[k][0] == b[k][0]
    assert any(not np.array_equal(a[k][1], c[k][1]) for k in a)
    # same places, but each patch restained differently: per-patch mean colours move by different amounts
    assert all(a[k][0]["x"] == plain[k][0]["x"] for k in a)
    shift = np.stack([a[k][1].mean((0, 1)) - plain[k][1].mean((0, 1)) for k in a])
    assert np.abs(shift).max() > 5 and shift.std(0).max() > 2
