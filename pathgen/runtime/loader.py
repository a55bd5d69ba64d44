"""The training DataLoader every trainer shares: batches fixed by (seed, epoch), resumable mid-epoch.

    loader = ResumableLoader(dataset, batch_size=32, seed=cfg.run.seed, num_workers=4, pin_memory=True)
    for batch in loader.epoch(epoch, skip_batches=step % loader.iters_per_epoch): ...

Each rank gets its DistributedSampler share (a world of 1 without torchrun); a resumed run skips the batches of
the interrupted epoch that were already trained on. The workers' seeds come from a generator seeded by
(seed, epoch, rank), never from the global RNG, so a resume does not shift them. A dataset with `set_epoch` (an
ItemSeededDataset) is told the epoch too.
"""

import torch
from torch.utils.data import DataLoader, Dataset

from pathgen.runtime.distributed import distributed_sampler, get_rank, get_world_size
from pathgen.runtime.seeding import ResumableSampler


class ResumableLoader:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 pin_memory: bool = False, collate_fn=None):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.sampler = ResumableSampler(distributed_sampler(dataset, seed=seed), batch_size)
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers, drop_last=True,
            pin_memory=pin_memory, generator=self.generator, persistent_workers=False, collate_fn=collate_fn,
        )

    @property
    def iters_per_epoch(self) -> int:
        """Full batches per epoch on this rank (the same on every rank: the sampler pads or drops evenly)."""
        return len(self.sampler.inner) // self.batch_size

    def epoch(self, epoch: int, skip_batches: int = 0):
        """An iterator over the batches of `epoch`, from batch `skip_batches` on."""
        self.sampler.set_epoch(epoch, skip_batches=skip_batches)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 100_003 + epoch * get_world_size() + get_rank())
        return iter(self.loader)
