"""Image augmentations: DINO's multi-crop (natural-image and H&E presets) and the evaluation transform.

Everything runs on CHW tensors with torchvision.transforms.v2: the image is converted once, each crop is
cut and resized *before* the colour operations (so those touch 224² or 96² pixels, not the full patch), and
pixels stay uint8 for as long as the operations allow. All randomness comes from torch's
RNG, so `torch.manual_seed` (and the per-worker seeding of DataLoader) makes the crops reproducible.
"""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("natural", "histo")

# Gaussian blur with sigma ~ U(0.1, 2.0) pixels, as DINO's PIL GaussianBlur(radius=sigma).
BLUR_SIGMA = (0.1, 2.0)
# The colour recipe of each preset, shared by CropView and the batched BatchCropView: colour jitter
# (brightness, contrast, saturation, hue) applied with probability JITTER_P, then grayscale with GRAYSCALE_P.
COLOR_JITTER = {"natural": (0.4, 0.4, 0.2, 0.1), "histo": (0.15, 0.15, 0.0, 0.0)}
JITTER_P = 0.8
GRAYSCALE_P = {"natural": 0.2, "histo": 0.0}


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {PRESETS}")


def to_uint8_chw(img: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A PIL image, uint8 HxWx3 array or uint8 3xHxW tensor as a uint8 3xHxW tensor (no copy when possible)."""
    if isinstance(img, Image.Image):
        img = np.array(img if img.mode == "RGB" else img.convert("RGB"))  # one writable copy
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 array, got {img.dtype} {img.shape}")
        if not img.flags.writeable:  # PIL hands out read-only buffers; torch wants to own writable memory
            img = img.copy()
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3:
        return img
    raise ValueError(f"expected a PIL image, uint8 HxWx3 array or uint8 3xHxW tensor, got {type(img).__name__}")


class HEDJitter(torch.nn.Module):
    """Stain jitter in the haematoxylin-eosin-DAB space of `skimage.color.rgb2hed` (Tellez et al., 2018).

    Each stain concentration s_c becomes s_c * a_c + b_c with a_c ~ U(1 - alpha, 1 + alpha) and
    b_c ~ U(-beta, beta). rgb2hed is linear in log-RGB, so the whole round trip is one 3x3 matrix and an
    offset applied to log(rgb): cheap enough for the data-loading hot loop. Unlike skimage we do not clip
    negative stain values, so an unperturbed jitter is exactly the identity. Input/output: float 3xHxW in [0, 1].
    Stain units are skimage's (optical density / ln(1e6)): beta = 0.01 shifts optical density by up to ~0.14.
    """

    def __init__(self, alpha: float = 0.05, beta: float = 0.01):
        super().__init__()
        from skimage.color import hed_from_rgb, rgb_from_hed

        self.alpha, self.beta = alpha, beta
        self.register_buffer("hed_from_rgb", torch.tensor(hed_from_rgb, dtype=torch.float32), persistent=False)
        self.register_buffer("rgb_from_hed", torch.tensor(rgb_from_hed, dtype=torch.float32), persistent=False)
        self.log_adjust = float(np.log(1e-6))  # skimage's scaling of optical density into stain units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Jitter a 3xHxW image, or each image of a Bx3xHxW batch with its own draw (from torch's CPU RNG)."""
        shape = (*x.shape[:-3], 3)
        a = 1 + (torch.rand(shape) * 2 - 1) * self.alpha
        b = (torch.rand(shape) * 2 - 1) * self.beta
        return self.jitter(x, a.to(x.device), b.to(x.device))

    def jitter(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scale stain concentrations by `a` and shift them by `b` ([3] or [B, 3], in H, E, D order)."""
        # log(rgb') = log(rgb) @ (M diag(a) M^-1) + L * (b @ M^-1), with pixels as row vectors.
        to_hed, to_rgb = self.hed_from_rgb.to(x.device), self.rgb_from_hed.to(x.device)
        matrix = to_hed @ torch.diag_embed(a) @ to_rgb
        offset = self.log_adjust * (b @ to_rgb)
        log_rgb = x.clamp_min(1e-6).log()
        out = torch.einsum("...chw,...cd->...dhw", log_rgb, matrix) + offset[..., None, None]
        return out.exp().clamp_(0, 1)


class GaussianBlur(torch.nn.Module):
    """Separable Gaussian blur, sigma ~ U(*sigma) pixels, kernel radius 3 sigma, on float 3xHxW.

    torchvision's GaussianBlur convolves with a full 2-D kernel of a fixed size; two 1-D passes sized to the
    drawn sigma give the same result at a fraction of the cost, which matters in the data-loading hot loop.
    """

    def __init__(self, sigma: tuple[float, float] = BLUR_SIGMA):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.empty(()).uniform_(*self.sigma))
        radius = min(int(np.ceil(3 * sigma)), min(x.shape[-2:]) - 1)  # reflect padding needs radius < size
        if radius < 1:
            return x
        taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, 1, -1)
        # Channels as a batch of 1-channel images: plain conv2d is ~3x faster than a grouped one on the CPU.
        y = torch.nn.functional.pad(x[:, None], (radius, radius, radius, radius), mode="reflect")
        y = torch.nn.functional.conv2d(y, kernel)  # along width
        y = torch.nn.functional.conv2d(y, kernel.transpose(-1, -2))  # along height
        return y[:, 0]


class CropView(torch.nn.Module):
    """One multi-crop view of a uint8 3xHxW image, as a normalised float 3 x size x size tensor.

    Random resized crop, then orientation, then (with p=0.8) colour jitter, then blur with p=blur_p and solarize
    with p=solarize_p, then normalisation. One module draws its coin flips and applies the steps to a single
    tensor: as a v2.Compose of eight transforms, torchvision's per-transform dispatch cost about a quarter of the
    augmentation time, ten views per image.

    preset "natural" (DINO's DataAugmentationDINO): horizontal flip, colour jitter 0.4/0.4/0.2/0.1, grayscale
    p=0.2. preset "histo": all 8 dihedral orientations (tissue has no 'up'; rot90 and flips lose no pixels),
    HED stain jitter followed by mild brightness/contrast jitter; no grayscale or solarize, which would destroy
    the H&E signal the encoder should learn.
    """

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
        check_preset(preset)
        self.preset, self.blur_p, self.solarize_p = preset, blur_p, solarize_p
        self.crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        self.jitter = v2.ColorJitter(*COLOR_JITTER[preset])
        self.stain = HEDJitter() if preset == "histo" else None
        self.grayscale_p = GRAYSCALE_P[preset]
        self.blur = GaussianBlur()
        self.mean, self.std = list(mean), list(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.crop(x)  # still uint8: cropping first means the float steps touch size^2 pixels only
        if self.preset == "histo":
            x = torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))
            if _coin(0.5):
                x = x.flip(-2)
        if _coin(0.5):
            x = x.flip(-1)
        x = x.float().div_(255)  # torchvision's colour ops would convert to float once per op otherwise
        if _coin(JITTER_P):
            x = self.jitter(x if self.stain is None else self.stain(x))
        if self.grayscale_p and _coin(self.grayscale_p):  # histo draws no coin here
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if _coin(self.blur_p):
            x = self.blur(x)
        if _coin(self.solarize_p):
            x = F.solarize(x, threshold=128 / 255)  # PIL's solarize(128) on [0, 1] floats
        return F.normalize(x, self.mean, self.std)


def _coin(p: float) -> bool:
    """True with probability p (drawn from torch's RNG even for p in {0, 1}, so streams do not depend on p)."""
    return bool(torch.rand(()) < p)


def dino_views(view, global_size, local_size, global_scale, local_scale, preset, mean, std) -> tuple:
    """DINO's three view recipes (global 1, global 2, local) built with `view` (CropView or BatchCropView):
    blur p=1.0 / 0.1 / 0.5, solarize p=0.2 on the second global view of natural images only."""
    solarize = 0.2 if preset == "natural" else 0.0
    global_scale, local_scale = tuple(global_scale), tuple(local_scale)
    return (
        view(global_size, global_scale, preset, 1.0, 0.0, mean, std),
        view(global_size, global_scale, preset, 0.1, solarize, mean, std),
        view(local_size, local_scale, preset, 0.5, 0.0, mean, std),
    )


class MultiCropAugmentation:
    """DINO multi-crop: 2 global views then `n_local` local views of one image, as normalised float tensors.

    preset "natural": DINO's recipe (flip, colour jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale p=0.2, Gaussian blur
    p=1.0 / 0.1 on the globals and 0.5 on the locals, solarize p=0.2 on the second global only).
    preset "histo": 90-degree rotations, horizontal and vertical flips, HED stain jitter plus mild
    brightness/contrast (p=0.8), the same blur; no solarize, no grayscale.
    """

    accepts_arrays = True  # PatchDataset hands over the stored array without a PIL round trip

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
        self.preset, self.n_local = preset, n_local
        views = dino_views(CropView, global_size, local_size, global_scale, local_scale, preset, mean, std)
        self.global1, self.global2, self.local = views

    def __call__(self, img: Image.Image | np.ndarray | torch.Tensor, second=None) -> list[torch.Tensor]:
        """[global1, global2, local_1..local_n] of `img`; with `second` (Gen-DINO's generated view of `img`), the
        second global view is cut from that image instead, and the local views stay real."""
        x = to_uint8_chw(img)
        x2 = x if second is None else to_uint8_chw(second)
        return [self.global1(x), self.global2(x2)] + [self.local(x) for _ in range(self.n_local)]

    def global_view(self, img: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        """One view of the first global recipe (Gen-DINO's interpolated and partner images)."""
        return self.global1(to_uint8_chw(img))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset!r}, n_local={self.n_local})"


class ResizeCenterCrop:
    """PIL (or array/tensor) -> uint8 3 x size x size: shorter side resized to size / crop_pct, centre cut.

    With crop_pct=1 an image that is already size x size (a patch tiled at that size) passes through untouched.
    """

    accepts_arrays = True  # PatchDataset hands over the stored array without a PIL round trip

    def __init__(self, size: int, crop_pct: float = 1.0):
        self.size, self.crop_pct = size, crop_pct
        self.resize = v2.Resize(round(size / crop_pct), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        self.crop = v2.CenterCrop(size)

    def __call__(self, img: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        x = to_uint8_chw(img)
        if self.crop_pct == 1 and x.shape[-2:] == (self.size, self.size):
            return x
        return self.crop(self.resize(x))


class EvalTransform(ResizeCenterCrop):
    """ResizeCenterCrop, then float in [0, 1] and normalisation: the frozen-feature evaluation input."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 1.0):
        super().__init__(size, crop_pct)
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        return F.normalize(super().__call__(img).float().div_(255), self.mean, self.std)


def eval_transform(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 1.0,
) -> EvalTransform:
    """Deterministic preprocessing for frozen-feature evaluation: PIL (or array/tensor) -> normalised 3xSxS.

    The shorter side is resized to size / crop_pct, then the centre size x size is cut. crop_pct=1.0 (the
    default) suits patches, which are already the field of view we want: a square patch is just resized.
    Use crop_pct=0.875 for ImageNet-style natural images (DINO's resize to 256 then crop 224).
    """
    return EvalTransform(size, mean, std, crop_pct)


def views_picture(
    crops: Sequence[torch.Tensor],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    n_images: int = 4,
) -> Image.Image:
    """A picture of what the encoder is trained on: one row per image, its views left to right.

    crops: the batch's views ([B, 3, s, s] each, normalised), as the training loop gets them.
    """
    return rows_picture([[view[row] for view in crops] for row in range(min(n_images, len(crops[0])))], mean, std)


def rows_picture(
    rows: Sequence[Sequence[torch.Tensor]],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Image.Image:
    """Rows of normalised [3, s, s] crops, left to right, as one picture.

    Each crop keeps its own size, top-aligned, with a 4 px white gap, so local crops show at their true scale
    against global ones; rows may differ in length.
    """
    gap = 4
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    pitch = max(c.shape[-1] for row in rows for c in row) + gap
    width = max(sum(c.shape[-1] + gap for c in row) for row in rows) + gap
    canvas = Image.new("RGB", (width, len(rows) * pitch + gap), "white")
    for r, row in enumerate(rows):
        x = gap
        for view in row:
            pixels = (view.detach().float().cpu() * std_t + mean_t).clamp(0, 1).mul(255).round().byte()
            canvas.paste(Image.fromarray(pixels.permute(1, 2, 0).numpy()), (x, gap + r * pitch))
            x += view.shape[-1] + gap
    return canvas
