"""OFA-KD's loss with adaptive target information enhancement (Hao et al. 2023), the "OFA" baseline."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_logits

OFAVariant = Literal["paper", "code"]
OFA_VARIANTS: tuple[str, ...] = ("paper", "code")


def ofa_class_weights(teacher_probs: Tensor, target: Tensor, eps: float, variant: OFAVariant = "paper") -> Tensor:
    """(B, N) weights w_c that multiply -log p_s^c in the OFA loss (no gradient: teacher side only).

    ``"paper"``: w_c^ = (1 + p_t^c^)^eps on the target class c^, w_c = p_t^c elsewhere (the
    equation of the paper, see :func:`ofa_loss`).
    ``"code"``: w = (p_t + 1_c^)^eps - 1_c^, i.e. (1 + p_t^c^)^eps - 1 on the target class and
    (p_t^c)^eps elsewhere: the weighting of the authors' released code as we recall it (not
    checked against it here); at eps = 1 it is exactly the teacher distribution (plain KD).
    """
    if variant not in OFA_VARIANTS:
        raise ValueError(f"ofa variant must be one of {OFA_VARIANTS}, got {variant!r}")
    if eps < 0:
        raise ValueError(f"ofa eps must be >= 0, got {eps}")
    onehot = F.one_hot(target.long(), teacher_probs.shape[-1]).to(teacher_probs.dtype)
    if variant == "paper":
        return torch.where(onehot.bool(), (1.0 + teacher_probs) ** eps, teacher_probs)
    return (teacher_probs + onehot) ** eps - onehot


def ofa_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    eps: float = 1.0,
    tau: float = 1.0,
    variant: OFAVariant = "paper",
) -> Tensor:
    """L_OFA = -(1 + p_t^c^)^eps log p_s^c^ - sum_{c != c^} p_t^c log p_s^c, averaged over the batch.

    Hao, Guo, Han, Tang, Hu, Wang and Xu 2023, "One-for-All: Bridge the Gap Between
    Heterogeneous Architectures in Knowledge Distillation" (NeurIPS), §3.3 "adaptive target
    information enhancement": the OFA loss (Eq. 7 as best we recall the numbering; not checked
    against the PDF). The paper writes the modulating exponent as epsilon (>= 0 here). c^ is the
    ground-truth class, p = softmax(z / tau) for teacher (detached) and student. The target-class
    factor (1 + p_t^c^)^eps >= 1 grows with the teacher's confidence on the true class, so a
    confident teacher pushes the student's target probability harder; eps = 0 gives a factor 1,
    i.e. CE with the label plus the teacher's non-target distribution:
    -log p_s^c^ - sum_{c != c^} p_t^c log p_s^c.

    Temperature: the paper's equation has none (tau = 1); the released code, as we recall it,
    divides both logits by one temperature (default 1) and does not multiply by tau^2; dtkd does
    the same. Reduction:
    sum over classes, mean over the batch. ``variant="code"`` swaps in the released code's class
    weights (:func:`ofa_class_weights`). Deviation: computed from log_softmax in float32
    (their code takes log(softmax)), the same values without underflow. ``target`` must be class
    indices in [0, N) (an unlabelled clip has no c^: the distiller refuses the transfer set).
    """
    check_logits(student_logits, teacher_logits, "ofa_loss")
    b, n = student_logits.shape
    if target.shape != (b,):
        raise ValueError(f"ofa_loss: target must be (B,) class indices, got {tuple(target.shape)}")
    if bool(((target < 0) | (target >= n)).any()):
        raise ValueError(f"ofa_loss: target classes must be in [0, {n}) (OFA needs the label of every clip)")
    if tau <= 0:
        raise ValueError(f"ofa_loss: tau must be > 0, got {tau}")
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / tau, dim=-1)
    weights = ofa_class_weights(p_t, target, eps, variant)
    return -(weights * log_p_s).sum(dim=-1).mean()


class OFALoss(nn.Module):
    """:func:`ofa_loss` with its hyper-parameters (eps, tau, variant) held; no parameters."""

    def __init__(self, eps: float = 1.0, tau: float = 1.0, variant: OFAVariant = "paper") -> None:
        super().__init__()
        if variant not in OFA_VARIANTS:
            raise ValueError(f"ofa variant must be one of {OFA_VARIANTS}, got {variant!r}")
        if eps < 0 or tau <= 0:
            raise ValueError(f"OFALoss: need eps >= 0 and tau > 0, got eps={eps}, tau={tau}")
        self.eps, self.tau, self.variant = float(eps), float(tau), variant

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return ofa_loss(student_logits, teacher_logits, target, self.eps, self.tau, self.variant)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, tau={self.tau}, variant={self.variant!r}"
