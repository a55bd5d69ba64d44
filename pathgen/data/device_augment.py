"""DINO multi-crop on whole batches, on the training device (GPU): the loader's workers only decode.

On a GPU server the per-image CPU augmentation (`MultiCropAugmentation`, ~9-20 ms per patch for ten crops) is
what starves the GPU: each worker core feeds ~50-100 patches/s. With `data.augment_on: device` the workers hand
over uint8 batches of the decoded patches and this module cuts and colours all views of all images at once
with kornia's batched augmentations, every sample drawing its own parameters. It is the same recipe as
`CropView` (see there for the presets), with two differences: crops are resampled by area-averaged bilinear
sampling (roi_align) rather than antialiased bicubic, and the blur kernel has a fixed 13-tap support (3 sigma at
the largest sigma).

All parameters are drawn from torch's CPU generator, whatever the device, so seeding and checkpointed RNG
state make a run reproducible and its resume exact, as with the worker-side augmentation.
"""

from collections.abc import Sequence

import torch
from torch import nn

from pathgen.data.augment import (
    BLUR_SIGMA,
    COLOR_JITTER,
    GRAYSCALE_P,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JITTER_P,
    HEDJitter,
    check_preset,
    dino_views,
)

BLUR_KERNEL = 2 * round(3 * BLUR_SIGMA[1]) + 1


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample choice between two batches: mask [B] (bool, any device)."""
    return torch.where(mask.to(a.device).view(-1, 1, 1, 1), a, b)


def _coins(n: int, p: float) -> torch.Tensor:
    return torch.rand(n) < p


def _apply(augmentation: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A kornia augmentation with parameters drawn on the CPU and moved to x's device, as kornia's own
    generators do when set to that device: the draws stay on the CPU RNG whatever the device."""
    params = augmentation.forward_parameters(x.shape)
    return augmentation(x, params={k: v.to(x.device) if torch.is_tensor(v) else v for k, v in params.items()})


class BatchCropView(nn.Module):
    """One multi-crop view of every image in a batch: float B x 3 x H x W in [0, 1] -> normalised B x 3 x s x s."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        preset: str,
        blur_p: float,
        solarize_p: float,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        import kornia.augmentation as K

        check_preset(preset)
        self.preset, self.size = preset, size
        self.boxes = K.RandomResizedCrop((size, size), scale=scale)  # only draws the boxes, vectorised
        self.jitter = K.ColorJitter(*COLOR_JITTER[preset])
        self.stain = HEDJitter() if preset == "histo" else None
        self.grayscale = K.RandomGrayscale(p=GRAYSCALE_P[preset])
        self.blur = K.RandomGaussianBlur(BLUR_KERNEL, BLUR_SIGMA, p=blur_p)
        self.solarize = K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p)  # fixed threshold 0.5
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Random resized crops of every image, all in one roi_align call.

        roi_align averages ceil(box / size) bilinear samples per output pixel along each axis: a downscaling
        crop is area-averaged (antialiased), like the CPU path's antialiased resize, where a plain warp would alias.
        """
        from torchvision.ops import roi_align

        corners = self.boxes.forward_parameters(x.shape)["src"]  # [B, 4, 2] inclusive pixel corners, (x, y)
        index = torch.arange(len(x), dtype=corners.dtype)[:, None]
        boxes = torch.cat([index, corners[:, 0], corners[:, 2] + 1], dim=1)  # (b, x1, y1, x2, y2), pixel edges
        return roi_align(x, boxes.to(x.device, x.dtype), self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        x = self.crop(x)
        if self.preset == "histo":  # the 8 dihedral orientations of a square: transpose, then two flips
            x = _where(_coins(n, 0.5), x.transpose(-2, -1), x)
            x = _where(_coins(n, 0.5), x.flip(-2), x)
        x = _where(_coins(n, 0.5), x.flip(-1), x)
        jittered = _apply(self.jitter, x if self.stain is None else self.stain(x))
        x = _where(_coins(n, JITTER_P), jittered, x)
        x = _apply(self.grayscale, x)
        x = _apply(self.blur, x)
        x = _apply(self.solarize, x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class DeviceMultiCrop(nn.Module):
    """DINO multi-crop of a uint8 batch B x 3 x H x W: [global1, global2, local_1..local_n], each B x 3 x s x s.

    The same presets and probabilities as `MultiCropAugmentation`; call it on the batch after moving it to the
    device. Runs in float32 whatever autocast is active.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        preset: str = "natural",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        self.n_local = n_local
        views = dino_views(BatchCropView, global_size, local_size, global_scale, local_scale, preset, mean, std)
        self.global1, self.global2, self.local = views

    @torch.no_grad()
    def forward(self, images: torch.Tensor, second: torch.Tensor | None = None) -> list[torch.Tensor]:
        """With `second` (a batch like `images`), the second global views are cut from it (Gen-DINO's generated
        views), the others from `images`."""
        x = _as_float(images)
        with torch.autocast(images.device.type, enabled=False):
            x2 = x if second is None else _as_float(second)
            return [self.global1(x), self.global2(x2)] + [self.local(x) for _ in range(self.n_local)]

    @torch.no_grad()
    def global_view(self, images: torch.Tensor) -> torch.Tensor:
        """A view of the first global recipe of each image (Gen-DINO's interpolated and partner images)."""
        with torch.autocast(images.device.type, enabled=False):
            return self.global1(_as_float(images))


def _as_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch B x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
    return images.float().div_(255)
