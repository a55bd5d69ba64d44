"""Collapse indicators of the DINO teacher, logged every few steps, and a loud warning when they go bad."""

import math
import warnings

import torch


@torch.no_grad()
def teacher_stats(targets: torch.Tensor) -> dict[str, float]:
    """Collapse indicators for teacher distributions [N, K] (after centring and sharpening).

    entropy ~ ln K: uniform collapse; marginal entropy ~ 0: every image goes to the same prototype (one-hot).
    """
    p = targets.float().clamp_min(1e-12)
    entropy = -(p * p.log()).sum(-1).mean()
    marginal = targets.float().mean(0).clamp_min(1e-12)
    return {
        "teacher_entropy": entropy.item(),
        "teacher_kl_to_uniform": math.log(targets.shape[-1]) - entropy.item(),
        "teacher_marginal_entropy": -(marginal * marginal.log()).sum().item(),
        "teacher_max_prob": targets.max(-1).values.mean().item(),
    }


class CollapseMonitor:
    """Warn loudly when the loss sits at ln K or the teacher outputs turn uniform or one-hot for `patience` logs."""

    def __init__(self, out_dim: int, patience: int = 5):
        self.log_k, self.patience, self.count, self.warned = math.log(out_dim), patience, 0, False

    def reason(self, loss: float, stats: dict[str, float]) -> str | None:
        if stats["teacher_entropy"] > 0.95 * self.log_k:
            return f"teacher outputs are ~uniform (entropy {stats['teacher_entropy']:.3f} ~ ln K {self.log_k:.3f})"
        if stats["teacher_marginal_entropy"] < 0.1:
            return "teacher outputs are ~one-hot on the same prototype for every image (marginal entropy ~ 0)"
        if abs(loss - self.log_k) < 0.02 * self.log_k:
            return f"loss {loss:.3f} sits at ln(out_dim) = {self.log_k:.3f}"
        return None

    def update(self, step: int, loss: float, stats: dict[str, float]) -> None:
        reason = self.reason(loss, stats)
        self.count = self.count + 1 if reason else 0
        if reason and self.count >= self.patience and not self.warned:
            self.warned = True
            warnings.warn(
                f"DINO COLLAPSE? step {step}: {reason} for {self.count} consecutive logs. Lower the teacher "
                "temperature, raise the centre momentum, use more/varied data, or check kNN accuracy.",
                stacklevel=2,
            )
