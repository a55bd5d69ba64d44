"""Toy inputs of the diffusion tests: patch stores of 4 textures, a random tiny encoder, a tiny UNet config."""

from pathlib import Path

import numpy as np
import torch

from pathgen.config import load_config
from pathgen.diffusion.config import DiffusionConfig

CLASSES = ("red_h", "green_v", "blue_dots", "grey_flat")
TINY_UNET = [  # one level at 4 x 4 px (16 px patched by 4 into 48 channels): ~40 k parameters, ~10 ms a step
    "model.patch_size=4", "model.block_out_channels=[32]", "model.down_block_types=[CrossAttnDownBlock2D]",
    "model.up_block_types=[CrossAttnUpBlock2D]", "model.layers_per_block=1", "model.attention_head_dim=8",
    "model.norm_num_groups=8", "model.projection_dim=32",
]


def texture(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One patch of class `label`: red horizontal stripes, green vertical stripes, blue dots or flat grey, each at
    a random phase and brightness (smooth images: a tiny model learns to denoise them in a few hundred steps)."""
    period, phase, gain = int(rng.integers(3, 5)), int(rng.integers(0, 4)), rng.uniform(0.8, 1.0)
    on = ((np.arange(size) + phase) // period) % 2 == 0
    img = np.full((size, size, 3), 20.0)
    if label == 0:
        img[on, :, 0] = 230
    elif label == 1:
        img[:, on, 1] = 230
    elif label == 2:
        img[..., 2] = 110
        img[np.ix_(on, on)] = (40, 40, 250)
    else:
        img[:] = 140
    return np.clip(img * gain, 0, 255).astype(np.uint8)


def make_texture_stores(root: Path, n_per_class: int = 8, size: int = 16, seed: int = 0) -> list[Path]:
    """One finished Zarr patch store per class (so a store index is a class), target_mpp 0.5."""
    from pathgen.store import PatchStoreWriter

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, name in enumerate(CLASSES):
        images = np.stack([texture(label, size, rng) for _ in range(n_per_class)])
        coords = np.stack([np.arange(n_per_class) * size, np.zeros(n_per_class)], 1).astype(np.int64)
        with PatchStoreWriter(root / f"{name}.zarr", coords, np.ones(n_per_class), patch_size=size,
                              attrs={"target_mpp": 0.5, "slide_path": name}) as writer:
            writer.write(0, images)
        paths.append(root / f"{name}.zarr")
    return paths


def make_encoder(root: Path, size: int = 16, seed: int = 0) -> Path:
    """A randomly initialised 1-block ViT exported like `pathgen pretrain ssl` does (its statistics see colour)."""
    from pathgen.ssl.export import create_backbone, export_encoder

    torch.manual_seed(seed)
    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    backbone = create_backbone("vit_tiny_patch16_224", size, kwargs)
    export_encoder(backbone, root, "vit_tiny_patch16_224", kwargs, size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return root


def tiny_config(out: Path, stores: list[Path], encoder: Path, *overrides: str) -> DiffusionConfig:
    base = [
        f"data.sources=[{', '.join(map(str, stores))}]", f"data.encoder={encoder}", "data.image_size=16",
        "data.held_out=2", "data.batch_size=8", "data.num_workers=0", *TINY_UNET,
        "noise.num_train_timesteps=100", "optim.epochs=2", "optim.lr=3e-3", "optim.warmup_steps=0",
        "sample.every_steps=0", "sample.per_embedding=2", "sample.steps=4", "run.log_every=1", "run.device=cpu",
        f"run.out_dir={out}",
    ]
    return load_config(DiffusionConfig, None, base + list(overrides))
