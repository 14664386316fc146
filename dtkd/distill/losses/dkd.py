"""Decoupled knowledge distillation (Zhao et al. 2022), the "DKD" baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_logits, kl_batchmean


def _binary_log_probs(z: Tensor, target_mask: Tensor) -> Tensor:
    """log [p_target, 1 - p_target] of softmax(z), computed stably in log space, (B, 2)."""
    lse = torch.logsumexp(z, dim=-1)
    log_target = z.masked_select(target_mask) - lse
    log_rest = torch.logsumexp(z.masked_fill(target_mask, float("-inf")), dim=-1) - lse
    return torch.stack([log_target, log_rest], dim=-1)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, tau: float
) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each already multiplied by tau^2 and averaged over the batch.

    Zhao et al. 2022, "Decoupled Knowledge Distillation", §3.1 (the reformulation of KD):
    TCKD = KL(b_T || b_S) with b = [p_t, 1 - p_t] the binary target/non-target split;
    NCKD = KL(p^_T || p^_S) with p^ the softmax over the non-target classes only.
    Deviation from the authors' code: it suppresses the target class with "logit - 1000" and
    takes log(softmax) in probability space; dtkd removes the target class exactly and works
    in log space (logsumexp), which gives the same values without underflow.
    """
    check_logits(student_logits, teacher_logits, "dkd_loss")
    b, n = student_logits.shape
    if n < 2:
        raise ValueError("dkd_loss needs at least 2 classes")
    if target.shape != (b,):
        raise ValueError(f"dkd_loss: target must be (B,) class indices, got {tuple(target.shape)}")
    z_s = student_logits.float() / tau
    z_t = teacher_logits.detach().float() / tau
    is_target = F.one_hot(target.long(), n).bool()
    tckd = F.kl_div(
        _binary_log_probs(z_s, is_target),
        _binary_log_probs(z_t, is_target),
        reduction="batchmean",
        log_target=True,
    )
    others = ~is_target
    nckd = kl_batchmean(z_t[others].view(b, n - 1), z_s[others].view(b, n - 1))
    return tau**2 * tckd, tau**2 * nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    tau: float,
) -> Tensor:
    """alpha * TCKD + beta * NCKD, the DKD objective (Zhao et al. 2022, §3.2); see :func:`dkd_terms`.

    Without the warm-up factor, which lives in :class:`DKDLoss` because it needs the epoch.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, tau)
    return alpha * tckd + beta * nckd


class DKDLoss(nn.Module):
    """DKD and the authors' linear warm-up factor min((epoch + 1) / warmup_epochs, 1).

    ``forward`` is the unwarmed DKD; ``warmup_factor(epoch)`` is the weight a distiller puts on it
    (the DKD distiller logs the unwarmed value and weights it by the factor). ``epoch`` is 0-based
    (the first epoch is 0 and already gets 1 / warmup_epochs), matching the authors' 1-based
    ``epoch / warmup``. ``epoch=None`` means "unknown" and disables the warm-up (factor 1).
    """

    def __init__(
        self, alpha: float = 1.0, beta: float = 8.0, tau: float = 4.0, warmup_epochs: int = 0
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.tau, self.warmup_epochs = alpha, beta, tau, warmup_epochs

    def warmup_factor(self, epoch: int | None) -> float:
        if epoch is None or self.warmup_epochs <= 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return dkd_loss(student_logits, teacher_logits, target, self.alpha, self.beta, self.tau)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, tau={self.tau}, warmup_epochs={self.warmup_epochs}"
