"""Training checkpoints that load with `torch.load(weights_only=True)`: tensors and plain Python types only.

Written atomically (temp file + rename), so a crash mid-save never leaves a truncated last.pt behind.
"""

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathgen.errors import CheckpointError


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors/lists (numpy's state is not weights_only-safe as is)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # .cpu(): a checkpoint loaded with map_location="cuda" has moved these to the GPU
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say so in one line
        raise CheckpointError(path, f"not a readable pathgen checkpoint ({type(err).__name__})") from None


def resolve_resume(resume: str | Path | None, out_dir: str | Path) -> Path | None:
    """`auto` means <out_dir>/checkpoints/last.pt when it exists (a fresh start otherwise); else a path."""
    if resume is None:
        return None
    if str(resume) == "auto":
        last = Path(out_dir) / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    return Path(resume)
