"""Per-iteration schedules as numpy arrays indexed by the global step (as DINO's utils.cosine_scheduler)."""

import numpy as np


def cosine_schedule(
    base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warmup from `warmup_start` to `base` over `warmup_epochs`, then a cosine from `base` to `final`.

    Unlike DINO's version the cosine lands exactly on `final` at the last step (DINO's stops one step short).
    """
    total = epochs * iters_per_epoch
    warmup = np.linspace(warmup_start, base, min(warmup_epochs * iters_per_epoch, total), endpoint=False)
    steps = np.arange(total - len(warmup))
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps) - 1, 1)))
    return np.concatenate([warmup, cosine])


def linear_warmup(start: float, end: float, epochs: int, iters_per_epoch: int, warmup_epochs: int) -> np.ndarray:
    """Linear from `start` to `end` over `warmup_epochs`, then constant at `end` (DINO's teacher temperature)."""
    total = epochs * iters_per_epoch
    ramp = np.linspace(start, end, min(warmup_epochs * iters_per_epoch, total))
    return np.concatenate([ramp, np.full(total - len(ramp), end)])
