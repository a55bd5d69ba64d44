"""The DINO loss, split into its pieces so that other targets (e.g. Gen-SIS mixed targets) can reuse them.

    targets = loss.teacher_targets(teacher_logits, temp)       # centre + sharpen, per global crop
    value   = loss.cross_entropy(targets, student_logits)      # H(t_i, s_j) over pairs i != j
    loss.update_center(teacher_logits)                         # EMA of the teacher's batch mean

`forward` is the three together. `disentanglement_loss` is Gen-SIS's task on interpolated images, whose target
mixes two teacher outputs before the softmax. Logits come as [n_crops * B, K] tensors, crop-major, as
MultiCropModel emits.
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


@fp32
def disentanglement_loss(
    student_logits: torch.Tensor,
    teacher_logits_1: torch.Tensor,
    teacher_logits_2: torch.Tensor,
    alpha: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """Gen-SIS's disentanglement loss (arXiv 2412.01672, Algorithm 1), the mean over the batch.

    The student sees x_int, generated from SLERP(e1, e2, alpha); its target mixes the teacher's raw head outputs
    of the two sources *before* the softmax, then is centred and sharpened as DINO's:

        z   = alpha * t1 + (1 - alpha) * t2                  (no gradient)
        P_t = softmax((z - center) / teacher_temp)
        L   = - mean_b sum_k P_t[b, k] log softmax(s[b] / student_temp)[k]

    student_logits, teacher_logits_1, teacher_logits_2: [B, K]; alpha: [B], the weight on teacher_logits_1;
    center: [K] (or [1, K]). With alpha = 1 the target is DINO's target for x1.
    """
    with torch.no_grad():
        a = alpha.float().view(-1, 1)
        mixed = a * teacher_logits_1.float() + (1 - a) * teacher_logits_2.float()
        target = F.softmax((mixed - center.float().view(1, -1)) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(target * log_probs).sum(dim=-1).mean()


@fp32
def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DINOv2's KoLeo regulariser (Sablayrolles et al., 2019): -mean_i log(distance of x_i to its nearest neighbour
    in the batch), on L2-normalised features [B, D]. It spreads a batch's features over the sphere, against
    the concentration in one direction that a freshly initialised ViT starts from."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)  # never one's own neighbour
        nearest = similarity.argmax(dim=1)
    return -torch.log((x - x[nearest]).norm(dim=-1) + eps).mean()
