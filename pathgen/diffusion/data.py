"""Training examples of the diffusion model: (target, embedding) pairs, the held-out split, dihedral flips.

The target is the patch itself (uint8 [3, S, S], read from its store) in pixel space, or its cached VAE latent in
latent space; the embedding is always the cached one. Nothing here runs the encoder or the VAE.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def split_held_out(n: int, held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): a seeded choice of `held_out` patches kept out of training."""
    held = np.sort(np.random.default_rng(seed).permutation(n)[:held_out])
    return np.setdiff1d(np.arange(n), held), held


class TrainingSet(Dataset):
    """Item i: (target, embedding) of patch indices[i]. Memory maps are opened per process (workers included)."""

    def __init__(self, cache_path: Path, indices: np.ndarray, patches=None):
        self.cache_path, self.indices, self.patches = Path(cache_path), np.asarray(indices), patches
        self._arrays: tuple | None = None

    def _open(self) -> tuple:
        if self._arrays is None:
            from pathgen.diffusion.cache import Cache

            cache = Cache(self.cache_path, {})
            self._arrays = cache.embeddings(), (None if self.patches is not None else cache.latents())
        return self._arrays

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        embeddings, latents = self._open()
        target = self.patches[j][0] if self.patches is not None else torch.from_numpy(np.array(latents[j]))
        return target, torch.from_numpy(np.array(embeddings[j]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # workers map the files themselves


def dihedral(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each square image x[i] ([B, C, S, S]) under dihedral transform k[i] in 0..7: rotate k % 4 quarter turns,
    mirrored first when k >= 4. Histology has no up and no handedness, so all 8 are the same tissue."""
    out = torch.empty_like(x)
    for r in range(8):
        rows = (k == r).nonzero().flatten()
        if len(rows):
            y = x[rows].flip(-1) if r >= 4 else x[rows]
            out[rows] = torch.rot90(y, r % 4, dims=(-2, -1))
    return out
