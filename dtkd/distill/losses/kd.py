"""Hinton et al. 2015 knowledge distillation (the "KD" baseline, paper Eq. 1)."""
from __future__ import annotations

from torch import Tensor

from ._common import check_logits, kl_batchmean


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau)), averaged over the batch.

    Hinton, Vinyals and Dean 2015, "Distilling the knowledge in a neural network"; the DT-KD
    paper's Eq. 1. "batchmean": KL summed over classes, divided by B. The tau^2 factor keeps
    the gradient scale independent of tau. Teacher detached. No deviation.
    """
    check_logits(student_logits, teacher_logits, "kd_loss")
    return tau**2 * kl_batchmean(teacher_logits.detach() / tau, student_logits.float() / tau)
