"""One place that decides where tensors live and at what precision.

CUDA with bf16 autocast when a GPU is present; the CPU in fp32 otherwise (bf16 on CPU is slow and
changes numerics, so we never autocast there).
"""

import contextlib
import os

import torch


def get_device(preferred: str | None = None) -> torch.device:
    """`preferred` may be 'cpu', 'cuda' or 'cuda:N'; by default CUDA (this rank's GPU) when available."""
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op context on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
