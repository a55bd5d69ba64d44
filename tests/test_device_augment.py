"""The batched multi-crop that runs on the training device: shapes, per-sample randomness, and the same recipe
as the per-image CPU augmentation."""

import numpy as np
import pytest
import torch
from skimage import data

from pathgen.data.augment import HEDJitter, MultiCropAugmentation
from pathgen.data.device_augment import BatchCropView, DeviceMultiCrop


@pytest.fixture(scope="module")
def tissue() -> torch.Tensor:
    """A 128 px uint8 3xHxW crop of skimage's IHC micrograph (real tissue texture and colour)."""
    return torch.from_numpy(data.immunohistochemistry()[100:228, 100:228].copy()).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("preset", ["natural", "histo"])
def test_views_have_the_configured_shapes(tissue, preset):
    views = DeviceMultiCrop(48, 24, n_local=3, preset=preset)(tissue[None].repeat(4, 1, 1, 1))
    assert [tuple(v.shape) for v in views] == [(4, 3, 48, 48)] * 2 + [(4, 3, 24, 24)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_rejects_anything_but_a_uint8_batch(tissue):
    with pytest.raises(ValueError, match="uint8 batch"):
        DeviceMultiCrop(32, 16)(tissue.float()[None])
    with pytest.raises(ValueError, match="uint8 batch"):
        DeviceMultiCrop(32, 16)(tissue)


def test_each_sample_draws_its_own_views_and_the_seed_fixes_them(tissue):
    batch = tissue[None].repeat(6, 1, 1, 1)
    aug = DeviceMultiCrop(32, 16, n_local=2, preset="histo")
    torch.manual_seed(3)
    first = aug(batch)
    torch.manual_seed(3)
    again = aug(batch)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    global1 = first[0].flatten(1)
    assert torch.cdist(global1, global1).triu(1)[torch.ones(6, 6).triu(1).bool()].min() > 1.0  # all 6 differ


def test_batched_stain_jitter_equals_per_image_jitter(tissue):
    hed = HEDJitter(alpha=0.2, beta=0.05)
    x = tissue[None].repeat(3, 1, 1, 1).float() / 255
    a, b = 1 + 0.2 * torch.randn(3, 3), 0.05 * torch.randn(3, 3)
    batched = hed.jitter(x, a, b)
    for i in range(3):
        torch.testing.assert_close(batched[i], hed.jitter(x[i], a[i], b[i]), rtol=0, atol=1e-6)


def test_a_full_image_crop_is_the_area_averaged_downscale(tissue):
    import kornia.augmentation as K

    view = BatchCropView(64, (1.0, 1.0), "histo", blur_p=0.0, solarize_p=0.0)
    view.boxes = K.RandomResizedCrop((64, 64), scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the whole 128 px image
    x = tissue[None].float() / 255
    torch.testing.assert_close(view.crop(x), torch.nn.functional.avg_pool2d(x, 2), rtol=0, atol=1e-5)


def _view_statistics(views: torch.Tensor) -> np.ndarray:
    """Across views: mean and spread (std) of the views' mean values, mean contrast (std), mean sharpness."""
    means, stds = views.mean((2, 3)), views.std((2, 3))
    sharpness = (views[..., 1:] - views[..., :-1]).abs().mean((1, 2, 3))
    return np.array([means.mean(), means.std(), stds.mean(), sharpness.mean()])


@pytest.mark.parametrize("preset", ["natural", "histo"])
def test_same_recipe_as_the_cpu_augmentation(tissue, preset):
    # 256 views each way. The views' mean colour and its spread agree within 4 standard errors, the contrast
    # within 0.03 and the sharpness within 20%; a missing colour jitter or blur moves them well outside that.
    torch.manual_seed(0)
    n = 256
    cpu = MultiCropAugmentation(64, 32, n_local=0, preset=preset)
    device = DeviceMultiCrop(64, 32, n_local=0, preset=preset)
    cpu_views = [cpu(tissue) for _ in range(n)]
    device_views = device(tissue[None].repeat(n, 1, 1, 1))
    for k in range(2):
        a = _view_statistics(torch.stack([v[k] for v in cpu_views]))
        b = _view_statistics(device_views[k])
        se_mean = np.hypot(a[1], b[1]) / np.sqrt(n)  # standard error of the difference of the means
        se_spread = np.hypot(a[1], b[1]) / np.sqrt(2 * n)  # ... and of the spreads (standard deviations)
        gaps = np.abs(b - a) / [se_mean, se_spread, 1, a[3]]
        assert (gaps <= [4, 4, 0.03, 0.2]).all(), f"view {k}: CPU {a.round(3)} vs device {b.round(3)}"
