"""open_slide/Slide on real demo SVS files, generic TIFFs, plain images and broken files."""

import shutil

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from pathgen.errors import SlideError
from pathgen.pipeline.demo_cohort import SyntheticSlide, write_svs
from pathgen.slide import open_slide
from pathgen.slide.reader import NO_MPP


def _tiny_svs(path, mpp, magnification, size=(512, 384)):
    synth = SyntheticSlide(*size, seed=3)
    write_svs(path, *size, synth.tile, mpp=mpp, magnification=magnification, tile_size=128)
    return path


def test_demo_slide_metadata(demo_slide):
    with open_slide(demo_slide) as slide:
        assert slide.format == "aperio"
        assert (slide.reader, slide.requested_reader, slide.reader_notice) == ("tifffile", "auto", None)
        assert slide.dimensions == (1024, 768)
        assert slide.level_dimensions == [(1024, 768), (256, 192)]
        assert slide.level_downsamples == pytest.approx([1.0, 4.0])
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "metadata"
        assert slide.objective_power == pytest.approx(40)


def test_read_region_is_rgb_and_matches_openslide(demo_slide):
    with open_slide(demo_slide) as slide:
        region = slide.read_region((100, 50), 0, (64, 32))
        expected = np.asarray(openslide.OpenSlide(str(demo_slide)).read_region((100, 50), 0, (64, 32)))[..., :3]
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, expected)
        # Beyond the slide OpenSlide returns transparent pixels: they must come back as white glass.
        outside = slide.read_region((1000, 700), 0, (64, 128))
        assert (outside[-40:, -30:] == 255).all()


def test_mpp_override_wins_over_metadata(demo_slide):
    with open_slide(demo_slide, mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "override")
    with pytest.raises(SlideError, match="positive"):
        open_slide(demo_slide, mpp=-1)


def test_mpp_falls_back_to_objective_power(tmp_path):
    path = _tiny_svs(tmp_path / "no_mpp.svs", mpp=None, magnification=20)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)  # 10 / 20x
        assert slide.mpp_source == "objective-power"
        assert slide.objective_power == 20
    with open_slide(path, mpp=0.46) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.46, "override")


def test_no_resolution_at_all_is_a_clear_error(tmp_path):
    path = _tiny_svs(tmp_path / "bare.svs", mpp=None, magnification=None)
    with pytest.raises(SlideError) as info:
        open_slide(path)
    assert str(path) in str(info.value) and NO_MPP in str(info.value)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp_source == "override"


def test_generic_tiled_tiff_with_resolution_tags(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    path = tmp_path / "generic.tif"
    # 0.5 um/px = 20000 px/cm; OpenSlide turns TIFF resolution in cm into openslide.mpp-x.
    tifffile.imwrite(
        path, img, tile=(128, 128), photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER"
    )
    with open_slide(path) as slide:
        assert slide.format == "generic-tiff"
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "metadata"
        np.testing.assert_array_equal(slide.read_region((10, 20), 0, (30, 40)), img[20:60, 10:40])


def test_jpeg_opens_as_one_level_slide(tmp_path):
    img = np.full((40, 60, 3), (200, 120, 90), np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(img).save(path, quality=95)
    with open_slide(path, mpp=1.0) as slide:
        assert slide.format == "image/jpeg" and slide.dimensions == (60, 40) and slide.level_count == 1
        assert np.abs(slide.read_region((0, 0), 0, (60, 40)).astype(int) - img).max() <= 3


def test_sixteen_bit_image_is_refused_not_misread(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(path)
    with pytest.raises(SlideError, match="convert to 8-bit RGB"):
        open_slide(path, mpp=0.5)


def test_png_opens_as_one_level_slide(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    path = tmp_path / "plain.png"
    Image.fromarray(img).save(path)
    with pytest.raises(SlideError, match="no microns-per-pixel"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.format == "image/png"
        assert slide.level_dimensions == [(80, 48)] and slide.level_downsamples == [1.0]
        assert slide.objective_power is None
        np.testing.assert_array_equal(slide.read_region((5, 6), 0, (20, 10)), img[6:16, 5:25])
        thumb, ds = slide.thumbnail(max_side=40)
        assert thumb.shape == (24, 40, 3) and ds == 2.0


def test_thumbnail_is_bounded_and_uses_the_pyramid(demo_slide):
    with open_slide(demo_slide) as slide:
        thumb, ds = slide.thumbnail(max_side=100)
        assert max(thumb.shape[:2]) <= 100
        # read from level 1 (256x192, /4) and box-reduced 3x
        assert ds == pytest.approx(12.0)
        assert thumb.shape == (64, 86, 3)
        full, ds1 = slide.thumbnail(max_side=2048)
        assert ds1 == 1.0 and full.shape == (768, 1024, 3)


def test_best_level_for_downsample(demo_slide):
    with open_slide(demo_slide) as slide:
        assert slide.best_level_for_downsample(1.0) == 0
        assert slide.best_level_for_downsample(3.9) == 0
        assert slide.best_level_for_downsample(3.99) == 1  # within the 1% tolerance
        assert slide.best_level_for_downsample(64) == 1
        assert slide.best_level_for_downsample(0.5) == 0


def test_paths_with_spaces_and_non_ascii(demo_slide, tmp_path):
    path = tmp_path / "dir with space" / "slïde ü 載玻片.svs"
    path.parent.mkdir()
    shutil.copy(demo_slide, path)
    with open_slide(path) as slide:
        assert slide.path == path and slide.mpp == pytest.approx(0.25)
        assert slide.read_region((0, 0), 1, (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("notes.svs", b"this is not a slide\n" * 10, "OpenSlide does not recognise"),
        ("notes.txt", b"this is not a slide\n" * 10, "not a slide or image"),
        ("empty.tif", b"", "not a slide or image"),
    ],
)
def test_non_slide_files_raise_slide_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideError, match=reason) as info:
        open_slide(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_svs_and_png_raise_slide_error(demo_slide, tmp_path):
    data = demo_slide.read_bytes()
    for frac in (0.05, 0.5, 0.97):
        path = tmp_path / f"truncated_{frac}.svs"
        path.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(SlideError, match="truncated") as info:
            open_slide(path)
        assert str(path) in str(info.value)
    png = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:3000])
    with pytest.raises(SlideError, match="truncated PNG"):
        open_slide(png, mpp=0.5)


def test_corrupt_tile_data_fails_on_read_not_silently(demo_slide, tmp_path):
    data = bytearray(demo_slide.read_bytes())
    rng = np.random.default_rng(0)
    start = len(data) // 4
    data[start : start + len(data) // 3] = rng.integers(0, 256, len(data) // 3, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.svs"
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match="cannot read region") as info:
        with open_slide(path) as slide:
            slide.read_region((0, 0), 0, slide.dimensions)
    assert str(path) in str(info.value)


def test_missing_file_and_unknown_reader(tmp_path, demo_slide):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideError, match="unknown reader"):
        open_slide(demo_slide, reader="bioformats")


def test_tiatoolbox_reader_missing_says_how_to_install(demo_slide):
    try:
        import tiatoolbox  # noqa: F401
    except ImportError:
        with pytest.raises(SlideError, match=r"pip install pathgen\[tiatoolbox\]"):
            open_slide(demo_slide, reader="tiatoolbox")
    else:  # with tiatoolbox installed, it must agree with OpenSlide on the basics
        with open_slide(demo_slide, reader="tiatoolbox") as slide:
            assert slide.dimensions == (1024, 768) and slide.mpp == pytest.approx(0.25)


def test_fallback_mpp_only_fills_in_what_the_slide_lacks(demo_slide, tmp_path):
    with open_slide(demo_slide, fallback_mpp=0.5) as slide:  # the slide says 0.25: it wins over the fallback
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.25), "metadata")
    bare = _tiny_svs(tmp_path / "bare.svs", mpp=None, magnification=None)
    with open_slide(bare, fallback_mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "fallback")
    with open_slide(bare, mpp=0.3, fallback_mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.3, "override")
    power_only = _tiny_svs(tmp_path / "power.svs", mpp=None, magnification=20)
    with open_slide(power_only, fallback_mpp=0.25) as slide:  # the slide's own objective power comes first
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.5), "objective-power")


@pytest.mark.parametrize("dpi_or_cm, unit", [((72, 72), "INCH"), ((300, 300), "INCH"), ((100, 100), "CENTIMETER")])
def test_default_tiff_resolutions_are_not_measurements(tmp_path, dpi_or_cm, unit):
    """72 dpi (352.8 um/px, as in OpenSlide's boxes.tiff) or any mpp outside 0.05-20 um/px means 'unknown'."""
    path = tmp_path / "default_res.tif"
    img = np.full((256, 256, 3), 200, np.uint8)
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", resolution=dpi_or_cm, resolutionunit=unit)
    with pytest.raises(SlideError, match="not a measurement") as info:
        open_slide(path)
    assert NO_MPP in str(info.value) and str(path) in str(info.value)
    with open_slide(path, fallback_mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "fallback")
