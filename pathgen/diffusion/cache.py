"""Embeddings (and, in latent space, VAE latents) of every training patch, computed once and kept on disk.

    <cache_dir>/<encoder sha256[:16]>/
        meta.json          encoder sha256, stores + content ids, image size, VAE, n   (what the arrays are of)
        embeddings.npy     float32 [N, D]   raw encoder embeddings, in PatchDataset order
        latents.npy        float32 [N, C, h, w]   latent space only

Keyed by the encoder's sha256: a run with another encoder gets its own cache, and a cache whose stores, image
size or VAE differ from the run's is rebuilt. Training then never runs the encoder or the VAE again. The arrays are
written through memory maps and read back the same way (np.load(allow_pickle=False)), so memory stays flat in N,
and they are built under a temporary name and renamed into place: a killed pass leaves no half cache behind.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pathgen.diffusion import space
from pathgen.diffusion.encoder import FrozenEncoder
from pathgen.runtime.progress import progress_bar

META, EMBEDDINGS, LATENTS = "meta.json", "embeddings.npy", "latents.npy"


@dataclass
class Cache:
    path: Path
    meta: dict

    def embeddings(self) -> np.ndarray:
        return np.load(self.path / EMBEDDINGS, mmap_mode="r", allow_pickle=False)

    def latents(self) -> np.ndarray | None:
        file = self.path / LATENTS
        return np.load(file, mmap_mode="r", allow_pickle=False) if file.is_file() else None


def cache_key(encoder: FrozenEncoder, stores: list[Path], content_ids: list[str], image_size: int,
              min_tissue: float, vae_id: str | None) -> dict:
    return {
        "encoder_sha256": encoder.sha256,
        "stores": [str(Path(s).resolve()) for s in stores],
        "content_ids": content_ids,
        "image_size": image_size,
        "min_tissue": min_tissue,
        "vae": vae_id,
    }


def open_cache(cache_dir: Path, key: dict) -> Cache | None:
    """The finished cache for `key`, or None when there is none (or it was made from other inputs)."""
    path = Path(cache_dir) / key["encoder_sha256"][:16]
    meta_file = path / META
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if {k: meta.get(k) for k in key} != key:
        return None
    return Cache(path, meta)


@torch.no_grad()
def build_cache(cache_dir: Path, key: dict, patches, encoder: FrozenEncoder, vae=None, batch_size: int = 64,
                num_workers: int = 0) -> Cache:
    """Encode every patch of `patches` (a PatchDataset yielding uint8 [3, S, S] images) once; returns the cache."""
    path = Path(cache_dir) / key["encoder_sha256"][:16]
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(patches)
    embeddings = np.lib.format.open_memmap(tmp / EMBEDDINGS, mode="w+", dtype=np.float32,
                                           shape=(n, encoder.embed_dim))
    latents = None
    if vae is not None:
        c, side = space.channels_and_size(key["image_size"], vae)
        latents = np.lib.format.open_memmap(tmp / LATENTS, mode="w+", dtype=np.float32, shape=(n, c, side, side))
    loader = DataLoader(patches, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    bar = progress_bar(total=n, desc="encode patches", unit="img")
    start = 0
    for images, _ in loader:
        stop = start + len(images)
        embeddings[start:stop] = encoder(images).numpy()
        if latents is not None:
            x = images.to(encoder.device).float().div(127.5).sub(1.0)
            with encoder.precision.autocast():
                latents[start:stop] = space.encode(x, vae).cpu().numpy()
        start = stop
        bar.update(len(images))
    bar.close()
    for array in (embeddings, latents):
        if array is not None:
            array.flush()
    del embeddings, latents
    (tmp / META).write_text(json.dumps({**key, "n": n, "embed_dim": encoder.embed_dim}, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return Cache(path, json.loads((path / META).read_text()))
