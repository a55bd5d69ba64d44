"""One place that decides where tensors live and at what precision.

    device = get_device()                    # this rank's GPU when there is one, else the CPU
    precision = precision_for(device)        # bf16 / fp16 + grad scaler / fp32
    with precision.autocast(): ...

On CUDA we autocast to bf16 where the GPU computes it natively (Ampere and newer) and to fp16 with a gradient
scaler on older GPUs (bf16 there is emulated and slow, and fp16 gradients underflow without scaling). On the CPU
we stay in fp32: bf16 on CPU is slow and changes numerics.
"""

import contextlib
import os
from dataclasses import dataclass
from typing import Literal

import torch

PrecisionMode = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def get_device(preferred: str | None = None) -> torch.device:
    """`preferred` may be 'cpu', 'cuda' or 'cuda:N'; by default CUDA (this rank's GPU) when available."""
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of one device (None: fp32, no autocast) and whether gradients need a scaler."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        """Autocast to `dtype` on this device; a no-op context in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active for fp16 only (disabled, it passes losses and steps through unchanged)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def precision_for(device: torch.device | str, mode: PrecisionMode = "auto") -> Precision:
    """`auto`: bf16 on CUDA GPUs that compute it natively, fp16 on older GPUs, fp32 on the CPU."""
    device = torch.device(device)
    if mode not in ("auto", *_DTYPES):
        raise ValueError(f"unknown precision {mode!r}; expected auto, fp32, bf16 or fp16")
    if mode == "auto":
        if device.type != "cuda":
            mode = "fp32"
        else:
            mode = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return Precision(device.type, _DTYPES[mode])


def autocast(device: torch.device, enabled: bool = True):
    """The automatic precision of `device` (see precision_for) as a context; a no-op when not enabled."""
    return precision_for(device).autocast() if enabled else contextlib.nullcontext()


def describe(device: torch.device | str | None = None, mode: PrecisionMode = "auto") -> str:
    """One line saying where work will run and at what precision, so that a silent CPU fallback is visible."""
    device = torch.device(device) if device is not None else get_device()
    precision = precision_for(device, mode)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"device {device} ({props.name}, {props.total_memory / 2**30:.0f} GiB), {precision.name}"
    line = f"device cpu ({torch.get_num_threads()} threads), {precision.name}"
    requested = os.environ.get("NVIDIA_VISIBLE_DEVICES", "")
    if requested and requested not in ("void", "none"):  # the container was given a GPU that torch cannot use
        line += (f"; WARNING: NVIDIA_VISIBLE_DEVICES={requested} but torch {torch.__version__} sees no usable GPU "
                 "(is the driver older than this torch's CUDA build? rebuild with --build-arg TORCH_CUDA=cu126)")
    return line


if __name__ == "__main__":  # the Docker entrypoint prints this before every command
    import sys

    print(f"pathgen: {describe()}", file=sys.stderr)
