"""L_SR: distillation towards the DATW-weighted teacher logits, paper §3.3, Eq. 3 and 7."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..diagnostics import DATWStats
from ._common import kl_batchmean
from .datw import WEIGHTING_MODES, WeightingMode, compute_datw, teacher_weights


def mix_teacher_logits(teacher_logits: Sequence[Tensor], weights: Tensor) -> Tensor:
    """z_target = sum_k omega_k z_k (Eq. 3): a mix of *logits*, not of probabilities.

    Teachers are detached; ``weights`` (B, K) keep their graph if they have one.
    """
    z_t = torch.stack([t.detach().float() for t in teacher_logits], dim=1)  # (B, K, N)
    return (weights.float().unsqueeze(-1) * z_t).sum(dim=1)


def sr_loss(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    tau: float,
    mode: WeightingMode = "datw",
    eps: float = 1e-8,
    *,
    weights: Tensor | None = None,
    grad: bool = False,
) -> Tensor:
    """L_SR = tau^2 * KL(softmax(z_target / tau) || softmax(z_S / tau)), batch mean (Eq. 7).

    Paper: §3.3, Eq. 3 (z_target = sum_k omega_k z_k) and Eq. 7. Readings (method notes,
    DATW 4-5): logits are mixed, not probabilities; "E_x" is the batch mean of the per-sample
    KL summed over classes (``batchmean``); the teacher side is detached. ``weights`` may be
    passed in when they were already computed (e.g. for diagnostics); otherwise they come from
    :func:`teacher_weights` with ``mode``/``eps``/``grad``. With K = 1 this is Hinton KD.
    """
    teachers = list(teacher_logits)
    if weights is None:
        weights = teacher_weights(student_logits, teachers, tau, mode, eps, grad)
    target = mix_teacher_logits(teachers, weights)
    return tau**2 * kl_batchmean(target / tau, student_logits.float() / tau)


class SRLoss(nn.Module):
    """L_SR with DATW, keeping per-epoch DATW statistics while in training mode."""

    def __init__(
        self,
        teacher_names: Sequence[str],
        tau: float,
        mode: WeightingMode = "datw",
        eps: float = 1e-8,
        grad: bool = False,
    ) -> None:
        super().__init__()
        if mode not in WEIGHTING_MODES:
            raise ValueError(f"unknown weighting mode {mode!r}")
        self.tau, self.mode, self.eps, self.grad = tau, mode, eps, grad
        self.stats = DATWStats(teacher_names)

    def forward(self, student_logits: Tensor, teacher_logits: Sequence[Tensor]) -> Tensor:
        teachers = list(teacher_logits)
        terms = compute_datw(student_logits, teachers, self.tau, self.mode, self.eps, self.grad)
        if self.training:
            self.stats.update(*terms)
        return sr_loss(student_logits, teachers, self.tau, weights=terms.weights)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, mode={self.mode!r}, eps={self.eps}, grad={self.grad}"
