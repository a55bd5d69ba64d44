"""Multi-crop augmentation: shapes, presets' behaviour, randomness, HED stain jitter, eval transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from pathgen.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GaussianBlur,
    HEDJitter,
    MultiCropAugmentation,
    eval_transform,
)

PINK = (200, 60, 90)  # H&E-like; solarize(128) would make R < B, grayscale R == B


def _marked_image(size: int = 32) -> Image.Image:
    """Grey image with a pink square in the top-left quadrant: every flip/rotation moves it somewhere else."""
    a = np.full((size, size, 3), 128, np.uint8)
    a[: size // 4, : size // 4] = PINK
    return Image.fromarray(a)


def _denormalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def _quadrant(x: torch.Tensor) -> tuple[int, int]:
    """(row, col) quadrant where the pink marker ended up."""
    rgb = _denormalize(x)
    redness = rgb[0] - rgb[1]
    h, w = redness.shape
    iy, ix = divmod(int(redness.argmax()), w)
    return int(iy >= h // 2), int(ix >= w // 2)


@pytest.mark.parametrize("preset", ["natural", "histo"])
@pytest.mark.parametrize("kind", ["pil", "numpy", "tensor"])
def test_multicrop_shapes_and_dtype(preset, kind):
    img = _marked_image(48)
    arr = np.asarray(img)
    inputs = {"pil": img, "numpy": arr, "tensor": torch.from_numpy(arr.copy()).permute(2, 0, 1)}
    crops = MultiCropAugmentation(32, 16, n_local=3, preset=preset)(inputs[kind])
    assert len(crops) == 5
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 for c in crops)
    # Normalised: roughly zero-centred values outside [0, 1].
    assert min(float(c.min()) for c in crops) < 0


def test_crops_differ_between_calls_and_are_seeded():
    aug = MultiCropAugmentation(32, 16, n_local=2, preset="natural")
    img = _marked_image(48)
    torch.manual_seed(0)
    a = aug(img)
    b = aug(img)
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))
    torch.manual_seed(0)
    again = aug(img)
    assert all(torch.equal(x, y) for x, y in zip(a, again, strict=True))


def test_histo_preset_rotates_and_flips_vertically_natural_does_not():
    img = _marked_image(32)
    seen = {}
    for preset in ("natural", "histo"):
        aug = MultiCropAugmentation(32, 16, n_local=0, global_scale=(1.0, 1.0), preset=preset)
        torch.manual_seed(0)
        seen[preset] = {_quadrant(aug(img)[0]) for _ in range(40)}
    assert seen["natural"] == {(0, 0), (0, 1)}  # horizontal flips only: the marker never moves down
    assert seen["histo"] == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_histo_preset_never_solarizes_or_greys():
    img = Image.fromarray(np.full((32, 32, 3), PINK, np.uint8))

    def pink_kept(preset: str) -> bool:
        aug = MultiCropAugmentation(32, 16, n_local=2, preset=preset)
        torch.manual_seed(0)
        for _ in range(40):
            for crop in aug(img):
                rgb = _denormalize(crop)
                if float(rgb[0].mean() - rgb[2].mean()) < 0.2:  # grey or solarised: red no longer dominates
                    return False
        return True

    assert pink_kept("histo")
    assert not pink_kept("natural")  # positive control: DINO's grayscale/solarize do fire


def test_hed_jitter_matches_skimage_stain_arithmetic():
    from skimage.color import hed2rgb, rgb2hed

    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.3, 0.95, (64, 3))
    stains = rgb2hed(rgb[None])[0]
    keep = (stains > 0).all(axis=1)  # skimage clips negative stains to 0; our linear form does not
    assert keep.sum() > 5
    a, b = np.array([1.04, 0.97, 1.02]), np.array([0.008, -0.005, 0.003])
    expected = hed2rgb((stains * a + b)[None])[0]
    x = torch.tensor(rgb.T[:, :, None], dtype=torch.float32)  # 3 x 64 x 1
    out = HEDJitter().jitter(x, torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    got = out[:, :, 0].T.numpy()
    np.testing.assert_allclose(got[keep], expected[keep], atol=2e-4)
    # Unperturbed it is the identity, and it stays inside [0, 1].
    assert torch.allclose(HEDJitter(alpha=0, beta=0)(x), x, atol=1e-5)
    assert 0 <= float(HEDJitter(alpha=0.5, beta=0.1)(x).min()) and float(HEDJitter(0.5, 0.1)(x).max()) <= 1


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="preset"):
        MultiCropAugmentation(preset="medical")


def test_eval_transform_is_deterministic_resize_and_center_crop():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    t = eval_transform(32)
    out = t(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, t(img))
    # Shorter side resized to 32, centre crop: a uniform image maps to its normalised colour everywhere.
    flat = Image.fromarray(np.full((40, 60, 3), 255, np.uint8))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(eval_transform(32)(flat), expected[:, None, None].expand(3, 32, 32), atol=1e-5)
    # crop_pct < 1 resizes larger first, then crops the centre (ImageNet-style).
    assert eval_transform(32, crop_pct=0.875)(img).shape == (3, 32, 32)


def test_resize_center_crop_passes_a_patch_of_the_right_size_through_untouched():
    from pathgen.data.augment import ResizeCenterCrop

    patch = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = ResizeCenterCrop(32)(patch)
    assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(patch).permute(2, 0, 1))
    assert ResizeCenterCrop(16)(patch).shape == (3, 16, 16)
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    assert ResizeCenterCrop(32)(wide).shape == (3, 32, 32)  # shorter side to 32, centre 32 x 32
    assert not torch.equal(ResizeCenterCrop(32, crop_pct=0.875)(patch), out)  # zooms in: resize 37, crop 32


def test_views_picture_lays_out_each_image_s_views_in_a_row():
    from pathgen.data.augment import views_picture

    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    shade = torch.tensor([0.2, 0.8]).view(2, 1, 1, 1)  # image 0 dark, image 1 light, in every view
    crops = [(shade.expand(2, 3, s, s) - mean) / std for s in (12, 12, 6)]
    pic = np.asarray(views_picture(crops, n_images=8))
    assert pic.shape == (2 * (12 + 4) + 4, 12 + 12 + 6 + 4 * 4, 3)  # two rows: only 2 images in the batch
    assert (pic[4:16, 4:16] == 51).all() and (pic[20:32, 4:16] == 204).all()  # 0.2 and 0.8 of 255
    assert (pic[4:10, 36:42] == 51).all() and (pic[10:16, 36:42] == 255).all()  # a local view, white below


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(3, 20, 30)
    torch.manual_seed(0)
    out = GaussianBlur(sigma=(1.2, 1.2))(x)
    # radius 3 sigma -> 4 taps each side; torch's "reflect" padding is scipy's "mirror"
    expected = np.stack([gaussian_filter(c.double().numpy(), 1.2, mode="mirror", truncate=4 / 1.2) for c in x])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
