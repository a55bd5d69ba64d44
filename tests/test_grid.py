"""plan_patches, tissue fractions, read_patch and render_qc on the demo slides."""

import numpy as np
import openslide
import pytest
from PIL import Image

from pathgen.errors import SlideError
from pathgen.slide import detect_tissue, open_slide, plan_patches, read_patch, render_qc
from pathgen.slide.grid import tissue_fractions


@pytest.fixture()
def slide_and_mask(demo_slide):
    with open_slide(demo_slide) as slide:
        thumb, ds = slide.thumbnail(max_side=512)
        yield slide, thumb, detect_tissue(thumb), ds


def test_plan_at_half_mpp_reads_level0_and_halves(slide_and_mask):
    slide, _, mask, ds = slide_and_mask
    plan = plan_patches(slide, target_mpp=0.5, patch_size=64, mask=mask, mask_downsample=ds, threshold=0.5)
    # 0.5 mpp on a 0.25 mpp slide: 2x, and level 1 (/4) would be too coarse -> level 0, read 128 px.
    assert (plan.level, plan.read_size, plan.patch_size, plan.patch_size_level0) == (0, 128, 64, 128)
    assert plan.target_mpp == 0.5
    assert plan.coords.dtype == np.int64 and plan.coords.shape == (len(plan), 2)
    assert plan.tissue_fraction.dtype == np.float32
    assert 0 < len(plan) < (1024 // 128) * (768 // 128)
    assert ((plan.tissue_fraction >= 0.5) & (plan.tissue_fraction <= 1.0)).all()
    # row-major: sorted by y, then x
    order = np.lexsort((plan.coords[:, 0], plan.coords[:, 1]))
    np.testing.assert_array_equal(order, np.arange(len(plan)))
    # whole patches on the grid, inside the slide
    assert (plan.coords % 128 == 0).all()
    assert (plan.coords[:, 0] + 128 <= 1024).all() and (plan.coords[:, 1] + 128 <= 768).all()


def test_plan_at_one_mpp_reads_level1(slide_and_mask):
    slide, _, mask, ds = slide_and_mask
    plan = plan_patches(slide, target_mpp=1.0, patch_size=32, mask=mask, mask_downsample=ds, threshold=0.0)
    assert (plan.level, plan.read_size, plan.patch_size_level0) == (1, 32, 128)
    assert len(plan) == (1024 // 128) * (768 // 128)  # threshold 0 keeps every whole patch


def test_threshold_is_inclusive_and_monotone(slide_and_mask):
    slide, _, mask, ds = slide_and_mask
    all_ = plan_patches(slide, 0.5, 64, mask, ds, threshold=0.0)
    some = plan_patches(slide, 0.5, 64, mask, ds, threshold=0.5)
    full = plan_patches(slide, 0.5, 64, mask, ds, threshold=1.0)
    assert len(all_) > len(some) >= len(full)
    assert len(some) == int((all_.tissue_fraction >= 0.5).sum())
    assert (full.tissue_fraction == 1.0).all()


def test_target_much_finer_than_the_scan_is_refused(slide_and_mask):
    slide, _, mask, ds = slide_and_mask
    with pytest.raises(SlideError, match="finer than the slide's level-0 mpp") as info:
        plan_patches(slide, 0.2, 64, mask, ds, 0.5)
    assert str(slide.path) in str(info.value)
    plan = plan_patches(slide, 0.24, 64, mask, ds, 0.5)  # within 10%: slight upsampling is allowed
    assert plan.level == 0 and plan.patch_size_level0 == 61


def test_tissue_fractions_exact_on_a_known_mask():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True  # top-left quarter is tissue
    coords = np.array([[0, 0], [16, 0], [8, 8], [0, 16], [30, 30]])
    # mask pixel = 4 level-0 px; patches of 16 level-0 px = 4x4 mask px
    frac = tissue_fractions(mask, 4.0, coords, 16)
    np.testing.assert_allclose(frac, [1.0, 0.0, 0.25, 0.0, 0.0])
    # patches smaller than a mask pixel look at the pixel they fall in
    np.testing.assert_allclose(tissue_fractions(mask, 4.0, np.array([[1, 1], [17, 1]]), 2), [1.0, 0.0])


def test_read_patch_matches_openslide_read_and_resize(demo_slide, slide_and_mask):
    slide, _, mask, ds = slide_and_mask
    plan = plan_patches(slide, 0.5, 64, mask, ds, 0.5)
    x, y = plan.coords[len(plan) // 2]
    patch = read_patch(slide, plan, (x, y))
    assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
    osr = openslide.OpenSlide(str(demo_slide))
    ref = np.asarray(osr.read_region((int(x), int(y)), 0, (128, 128)).convert("RGB").resize((64, 64), Image.BILINEAR))
    diff = np.abs(patch.astype(int) - ref.astype(int))
    assert diff.mean() < 6, diff.mean()
    assert patch.std() > 10  # real texture, not a blank


def test_read_patch_from_a_coarser_level(slide_and_mask):
    slide, _, mask, ds = slide_and_mask
    plan = plan_patches(slide, 1.0, 32, mask, ds, 0.5)
    x, y = plan.coords[0]
    patch = read_patch(slide, plan, (x, y))
    level0 = np.asarray(Image.fromarray(slide.read_region((x, y), 0, (128, 128))).reduce(4))
    assert patch.shape == (32, 32, 3)
    assert np.abs(patch.astype(int) - level0.astype(int)).mean() < 8  # level 1 is itself a JPEG'd 4x reduction


def test_render_qc_draws_contour_and_grid(tmp_path, slide_and_mask):
    slide, thumb, mask, ds = slide_and_mask
    plan = plan_patches(slide, 0.5, 64, mask, ds, 0.5)
    out = tmp_path / "qc dir" / "slïde.png"
    render_qc(thumb, mask, plan, ds, out)
    from pathgen.slide.qc import CONTOUR_COLOUR, GRID_COLOUR, LEGEND_HEIGHT

    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (thumb.shape[0] + LEGEND_HEIGHT, *thumb.shape[1:])  # the legend strip below

    assert (img == CONTOUR_COLOUR).all(-1).sum() > 100
    # every kept patch's top-left corner carries the grid colour
    x, y = (plan.coords[0] / ds).astype(int)
    assert (img[y, x : x + 5] == GRID_COLOUR).all(-1).any()
    assert (img == GRID_COLOUR).all(-1).sum() > 4 * len(plan)


def test_plan_on_a_plain_image(tmp_path):
    img = np.full((96, 128, 3), 244, np.uint8)
    img[32:96, 64:128] = (140, 80, 60)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    with open_slide(path, mpp=0.5) as slide:
        thumb, ds = slide.thumbnail()
        plan = plan_patches(slide, 1.0, 16, detect_tissue(thumb, smooth_um=0), ds, 0.5)
        assert plan.level == 0 and plan.read_size == 32
        np.testing.assert_array_equal(plan.coords, [[64, 32], [96, 32], [64, 64], [96, 64]])
        assert read_patch(slide, plan, plan.coords[0]).shape == (16, 16, 3)


def test_blank_or_too_small_slides_give_an_empty_plan(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((40, 50, 3), (150, 90, 60), np.uint8)).save(path)
    with open_slide(path, mpp=0.5) as slide:
        thumb, ds = slide.thumbnail()
        plan = plan_patches(slide, 0.5, 64, detect_tissue(thumb), ds, 0.5)  # patch bigger than the image
        assert plan.coords.shape == (0, 2) and plan.coords.dtype == np.int64 and len(plan.tissue_fraction) == 0
        empty = plan_patches(slide, 0.5, 16, np.zeros_like(thumb[..., 0], bool), ds, 0.5)
        assert len(empty) == 0
        render_qc(thumb, np.zeros(thumb.shape[:2], bool), empty, ds, tmp_path / "qc.png")
        assert (tmp_path / "qc.png").is_file()


def test_patch_outlines_are_painted_exactly_and_clipped_at_the_edges():
    from pathgen.slide.qc import _outline_squares

    rgb = np.zeros((12, 12, 3), np.uint8)
    _outline_squares(rgb, np.array([[2.0, 3.4], [9.0, -2.0]]), 4.0, (1, 2, 3))
    painted = (rgb == (1, 2, 3)).all(-1)
    expected = np.zeros((12, 12), bool)
    expected[3, 2:7] = expected[7, 2:7] = expected[3:8, 2] = expected[3:8, 6] = True  # the first square, whole
    expected[2, 9:12] = expected[0:3, 9] = True  # the second: its bottom and left edges, inside the picture
    assert (painted == expected).all() and (rgb[~painted] == 0).all()
