"""detect_tissue on procedural H&E demo slides, the IHC micrograph, blank and tinted glass, pale H&E-like tissue."""

import numpy as np
import pytest
from skimage import color, data

from pathgen.pipeline.demo_cohort import SyntheticSlide, make_blank_slide
from pathgen.slide import detect_tissue, open_slide


def _pale_he(shape=(160, 240)) -> np.ndarray:
    """Faint H&E: the IHC micrograph's hematoxylin at 30%, a trace of eosin, no DAB."""
    hem = color.rgb2hed(data.immunohistochemistry())[: shape[0], : shape[1], 0]
    hed = np.stack([hem * 0.3, np.full_like(hem, 0.01), np.zeros_like(hem)], axis=-1)
    return (np.clip(color.hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


def _glass(shape, tint=(244, 243, 240), noise=2, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.array(tint) + rng.integers(-noise, noise + 1, (*shape, 3)), 0, 255).astype(np.uint8)


def test_finds_tissue_on_demo_slide(demo_slide):
    with open_slide(demo_slide) as slide:
        thumb, _ = slide.thumbnail(max_side=512)
    mask = detect_tissue(thumb)
    assert mask.shape == thumb.shape[:2] and mask.dtype == bool
    assert 0.2 < mask.mean() < 0.7


def test_agrees_with_the_synthetic_ground_truth():
    synth = SyntheticSlide(1024, 768, seed=5)
    thumb = synth.tile(0, 0, 1024, 768)[1::2, 1::2]
    truth = synth.tissue_mask(0, 0, 1024, 768)[1::2, 1::2] > 0.5  # where the tissue is more than half opaque
    mask = detect_tissue(thumb, mpp=0.5)  # a 0.25 um/px slide at half resolution
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.75


def test_blank_slide_gives_empty_mask(tmp_path):
    path = make_blank_slide(tmp_path / "blank.svs", width=512, height=384)
    with open_slide(path) as slide:
        thumb, _ = slide.thumbnail()
    assert not detect_tissue(thumb).any()
    assert not detect_tissue(np.full((64, 64, 3), 255, np.uint8)).any()


@pytest.mark.parametrize("tint", [(244, 243, 240), (236, 232, 218), (225, 228, 235)])
def test_tinted_noisy_glass_is_not_tissue(tint):
    """Otsu alone would split glass noise in half; the guards must keep the mask empty."""
    assert not detect_tissue(_glass((128, 160), tint=tint, noise=3)).any()


def test_pale_he_is_detected_and_glass_around_it_is_not():
    img = _glass((300, 400))
    he = _pale_he()
    assert color.rgb2hsv(he)[..., 1].mean() < 0.2  # genuinely pale
    img[70:230, 80:320] = he
    mask = detect_tissue(img)
    assert mask[90:210, 100:300].mean() > 0.95
    assert mask[:50].mean() == 0 and mask[250:].mean() == 0


def test_small_specks_removed_and_holes_filled():
    img = _glass((200, 200))
    img[60:140, 60:140] = (150, 90, 60)  # tissue block
    img[95:100, 95:100] = (244, 243, 240)  # a tiny hole in it
    img[10:12, 180:182] = (120, 40, 40)  # a dust speck
    mask = detect_tissue(img)
    assert mask[97, 97] and not mask[11, 181]
    assert mask[70:130, 70:130].all()


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="RGB"):
        detect_tissue(np.zeros((10, 10), np.uint8))


def test_pale_tissue_is_kept_on_a_slide_that_is_mostly_tissue():
    """20% glass, 40% pale H&E, 40% dense dark tissue: little glass must not lift the threshold above the pale part."""
    img = _glass((250, 500))
    hem = color.rgb2hed(data.immunohistochemistry())[:250, :200, 0]
    dense = np.stack([hem * 3.0 + 0.03, 0.5 * hem + 0.02, np.zeros_like(hem)], axis=-1)
    img[:, 100:300] = _pale_he((250, 200))
    img[:, 300:] = (np.clip(color.hed2rgb(dense), 0, 1) * 255).astype(np.uint8)
    mask = detect_tissue(img)
    assert mask[:, 110:290].mean() > 0.95  # pale
    assert mask[:, 310:].mean() > 0.99 and mask[:, :90].mean() == 0  # dense, glass


@pytest.mark.parametrize("mpp", [8.0, 2.0])
def test_sizes_are_in_microns_whatever_the_mask_resolution(mpp):
    """Two tissue blocks 24 um apart are joined and 120 um apart are not, at 8 and at 2 um per mask pixel."""
    px = round(8 / mpp)  # mask pixels per 8 um
    img = _glass((60 * px, 100 * px))
    block = (150, 90, 60)
    img[10 * px : 50 * px, 5 * px : 30 * px] = block
    img[10 * px : 50 * px, 33 * px : 58 * px] = block  # 3 x 8 = 24 um gap
    img[10 * px : 50 * px, 73 * px : 95 * px] = block  # 15 x 8 = 120 um gap
    mask = detect_tissue(img, mpp=mpp, smooth_um=0)
    row = mask[30 * px]
    assert row[30 * px : 33 * px].all() and not row[60 * px : 71 * px].any()


def _mask_res_ihc(shape) -> np.ndarray:
    """The IHC micrograph as an 8 um/px mask sees it: 16x area-averaged."""
    from PIL import Image

    ihc = np.tile(data.immunohistochemistry(), (5, 5, 1))
    small = np.asarray(Image.fromarray(ihc).reduce(16))
    return np.ascontiguousarray(small[: shape[0], : shape[1]])


def test_pen_marks_black_ink_and_padding_are_not_tissue():
    from pathgen.slide.tissue import segment_tissue

    img = _glass((200, 320))
    img[40:160, 40:200] = _mask_res_ihc((120, 160))
    img[:, 300:] = 0  # black scanner padding
    img[90:110, 20:260] = (40, 160, 80)  # a green marker stroke, across glass and tissue
    img[20:32, 220:290] = (30, 60, 170)  # a blue one on glass
    img[170:182, 40:200] = (25, 25, 30)  # black ink under the tissue
    result = segment_tissue(img)
    tissue, pen = result.tissue, result.pen
    for stroke in (np.s_[90:110, 20:260], np.s_[20:32, 220:290], np.s_[170:182, 40:200], np.s_[:, 300:]):
        assert not tissue[stroke].any() and pen[stroke].all()
    assert not tissue[:, 280:].any()  # no rim of 'tissue' where padding meets glass
    assert tissue[45:85, 45:195].mean() > 0.95 and tissue[115:155, 45:195].mean() > 0.95


def test_no_pen_is_found_on_stained_tissue(demo_slide):
    from pathgen.slide.tissue import segment_tissue

    with open_slide(demo_slide) as slide:
        thumb, ds = slide.thumbnail(max_side=256)
    assert segment_tissue(thumb, mpp=0.25 * ds).pen.mean() < 0.001
    assert not segment_tissue(_pale_he()).pen.any()
    assert not segment_tissue(_mask_res_ihc((120, 160))).pen.any()


def test_fast_hsv_and_small_object_removal_equal_scikit_image():
    from skimage.color import rgb2hsv
    from skimage.morphology import remove_small_objects as skimage_remove

    from pathgen.slide.tissue import hsv_image, remove_small_objects

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    rgb[:8] = 128  # grey: no hue
    rgb[8:16] = rgb[8:16, :, :1]  # max shared by channels
    np.testing.assert_allclose(hsv_image(rgb), rgb2hsv(rgb), atol=1e-6)
    mask = rng.random((64, 64)) > 0.55
    assert (remove_small_objects(mask, 4) == skimage_remove(mask, max_size=4)).all()


@pytest.mark.parametrize("radius", [0.7, 1.0, 1.5, 2.0, 2.9, 4.0])
def test_closing_by_footprint_equals_closing_by_distance_transform(radius, monkeypatch):
    """close_disk takes a disk footprint for small radii, distance transforms for large: both give one closing,
    that of scikit-image with the same disk on the edge-replicated mask."""
    from scipy import ndimage
    from skimage.morphology import closing

    import pathgen.slide.tissue as tissue

    rng = np.random.default_rng(int(radius * 10))
    for _ in range(20):
        h, w = rng.integers(6, 60, 2)
        mask = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 2.5)) > rng.uniform(0.47, 0.53)
        by_footprint = tissue.close_disk(mask, radius)
        monkeypatch.setattr(tissue, "DISK_FOOTPRINT_MAX_RADIUS", 0.0)
        by_distance = tissue.close_disk(mask, radius)
        monkeypatch.undo()
        assert (by_footprint == by_distance).all()
        r, pad = int(radius), int(np.ceil(radius)) + 1
        y, x = np.mgrid[-r : r + 1, -r : r + 1]
        closed = closing(np.pad(mask, pad, mode="edge"), x * x + y * y <= radius * radius, mode="ignore")
        assert (by_footprint == closed[pad:-pad, pad:-pad]).all()
