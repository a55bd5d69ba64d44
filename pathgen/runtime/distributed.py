"""torchrun / DDP set-up with a single-process fallback.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR in the environment) we join the process
group: NCCL when there is a GPU, gloo on the CPU. Launched as a plain process, everything below degrades to
rank 0 of a world of 1, so the same training code runs either way.
"""

import os

import torch
import torch.distributed as dist

from pathgen.runtime.device import get_device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(preferred_device: str | None = None) -> torch.device:
    """Join the torchrun process group if launched by torchrun; return this process's device."""
    device = get_device(preferred_device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return device


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over all processes, in place (a no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= get_world_size()
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place (a no-op in a single process).

    Averages of uneven parts (a masked batch, ranks with different counts) must be sums and counts reduced
    together, then divided: the mean of per-rank means weighs a rank's few items like another's many.
    """
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def distributed_sampler(dataset, seed: int, shuffle: bool = True, drop_last: bool = True):
    """A DistributedSampler that also works without a process group (world of 1).

    Its order depends only on (seed, epoch) — call set_epoch — which is what makes resume exact.
    """
    from torch.utils.data import DistributedSampler

    return DistributedSampler(
        dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=shuffle, seed=seed, drop_last=drop_last
    )
