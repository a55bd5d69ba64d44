"""Seeds and sample order that make a training run reproducible and its resume exact.

Three things decide what a step sees: the global RNGs (model init, dropout), the order of the data (fixed by
(seed, epoch) through `ResumableSampler`) and each item's random augmentation (fixed by (seed, epoch, index)
through `ItemSeededDataset`). None of them depends on how many DataLoader workers there are or on where a run
was interrupted.
"""

import itertools
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (every device's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item `index` of `epoch`, independent for every (seed, epoch, index).

    numpy's SeedSequence hashes the triple, so seeds never collide the way an affine formula does once the index
    outgrows its stride (with `epoch * 10**8 + index`, item 10**8 of epoch 0 is item 0 of epoch 1).
    """
    words = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class ItemSeededDataset(Dataset):
    """Draws each item's augmentation from RNGs seeded by (seed, epoch, index), then restores them.

    torch's CPU generator, Python's `random` and numpy's global RNG are all seeded, so a transform may draw from
    any of them. An item's crops then depend on nothing else: not on which DataLoader worker loads it, nor on what
    that worker loaded before. So a run resumed mid-epoch gets exactly the crops the uninterrupted run got, with
    any number of workers, and the crops do not change with data.num_workers.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # workers are started per epoch, each with a copy of this object

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        from torch.utils.data import get_worker_info

        # In the main process (num_workers 0) the global RNGs are the training run's: put them back after. A
        # DataLoader worker draws from them for its items only, each reseeded: saving and restoring numpy's state
        # there would cost ~0.1-0.2 ms per item for nothing.
        restore = get_worker_info() is None
        states = (torch.get_rng_state(), random.getstate(), np.random.get_state()) if restore else None
        s = item_seed(self.seed, self.epoch, int(i))
        # the CPU generator only: torch.manual_seed also visits every accelerator backend (~0.5 ms per call)
        torch.default_generator.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)
        try:
            return self.dataset[i]
        finally:
            if states is not None:
                torch.set_rng_state(states[0])
                random.setstate(states[1])
                np.random.set_state(states[2])


class ResumableSampler(Sampler):
    """A distributed sampler whose epoch order depends on (seed, epoch) only, and that can skip the batches
    already trained on, so a resumed run sees exactly the images the uninterrupted run would have."""

    def __init__(self, inner: Sampler, batch_size: int):
        self.inner, self.batch_size, self.skip = inner, batch_size, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip
