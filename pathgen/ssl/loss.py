"""The DINO loss, split into its pieces so that other targets (e.g. Gen-SIS mixed targets) can reuse them.

    targets = loss.teacher_targets(teacher_logits, temp)       # centre + sharpen, per global crop
    value   = loss.cross_entropy(targets, student_logits)      # H(t_i, s_j) over pairs i != j
    loss.update_center(teacher_logits)                         # EMA of the teacher's batch mean

`forward` is the three together. Logits come as [n_crops * B, K] tensors, crop-major, as MultiCropModel emits.
Every term is computed in fp32 with autocast off, whatever context calls it: under bf16 autocast the einsum
would run in bf16, which near ln(65536) ~ 11 resolves only 0.06.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from pathgen.runtime.distributed import all_reduce_sum


def fp32(fn):
    """Run `fn` with autocast off on every device type its tensors may live on (inputs are cast by `fn`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))  # a buffer, so it is saved with the state dict

    @torch.no_grad()
    @fp32
    def teacher_targets(self, teacher_logits: torch.Tensor, teacher_temp: float, n_crops: int) -> list[torch.Tensor]:
        """Centre then sharpen the teacher's logits: softmax((t - c) / T_t), one [B, K] tensor per crop."""
        probs = F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)
        return list(probs.chunk(n_crops))

    @fp32
    def cross_entropy(
        self, targets: list[torch.Tensor], student_logits: torch.Tensor, n_crops: int, skip_same: bool = True
    ) -> torch.Tensor:
        """Mean over pairs (target i, student crop j) of -sum_k t_ik log softmax(s_j / T_s)_k.

        With `skip_same`, pairs where the student sees the very crop the target came from (i == j) are left out,
        as in DINO; pass targets that come from elsewhere (a mixed target) with `skip_same=False`.
        """
        log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        log_probs = log_probs.view(n_crops, -1, log_probs.shape[-1])  # [n_crops, B, K]
        target = torch.stack(targets)  # [n_targets, B, K]
        # every (target i, crop j) cross-entropy at once, averaged over the batch: one contraction over (B, K)
        pair_ce = -torch.einsum("ibk,jbk->ij", target, log_probs) / log_probs.shape[1]
        keep = torch.ones_like(pair_ce, dtype=torch.bool)
        if skip_same:
            keep &= ~torch.eye(*pair_ce.shape, dtype=torch.bool, device=pair_ce.device)
        return pair_ce[keep].mean()

    @torch.no_grad()
    @fp32
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the teacher's mean output over the whole (all-process) batch.

        The batch mean is a sum and a count reduced over all processes, then divided: the mean of per-rank means
        would weigh a rank with few rows (an uneven last batch, a masked update) like one with many.
        """
        logits = teacher_logits.float()
        total = torch.cat([logits.sum(dim=0), logits.new_tensor([len(logits)])])
        total = all_reduce_sum(total)
        batch_center = (total[:-1] / total[-1]).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float, n_student_crops: int
    ) -> torch.Tensor:
        n_teacher_crops = teacher_logits.shape[0] * n_student_crops // student_logits.shape[0]
        targets = self.teacher_targets(teacher_logits, teacher_temp, n_teacher_crops)
        loss = self.cross_entropy(targets, student_logits, n_student_crops)
        self.update_center(teacher_logits)
        return loss
