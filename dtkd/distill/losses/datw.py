"""Discrepancy-Aware Teacher Weighting (DATW), paper §3.3, Eq. 4-6 and Table 5."""
from __future__ import annotations

import contextlib
import math
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

WeightingMode = Literal["uniform", "confidence", "discrepancy", "datw"]
WEIGHTING_MODES: tuple[str, ...] = ("uniform", "confidence", "discrepancy", "datw")


class DATWTerms(NamedTuple):
    """Everything DATW computes for one batch; all (B, K) except ``fallback`` (B,)."""

    weights: Tensor
    confidence: Tensor
    discrepancy: Tensor
    fallback: Tensor  # True where the scores summed below eps and weights fell back to 1/K


def teacher_confidence(teacher_logits: Tensor, tau: float) -> Tensor:
    """C_k = 1 - H(softmax(z_k / tau)) / log N, in [0, 1] (Eq. 4, sign-corrected).

    Paper, Eq. 4 writes (1/log N) * sum p log p, which lies in [-1, 0]; multiplied by a
    non-negative discrepancy and normalised (Eq. 6) that would favour the *less* confident
    teacher, contradicting the text ("lower entropy implies higher certainty"). dtkd uses the
    normalised negative entropy shifted to [0, 1] (method notes, DATW 1). Works on any
    leading shape; the class axis is the last one.
    """
    n = teacher_logits.shape[-1]
    if n < 2:
        raise ValueError(f"teacher confidence needs at least 2 classes, got {n}")
    log_p = F.log_softmax(teacher_logits / tau, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return (1.0 - entropy / math.log(n)).clamp(0.0, 1.0)


def student_teacher_discrepancy(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """D_k = 1 - cos(z_S, z_k) on raw (untempered) logits, in [0, 2] (Eq. 5).

    A zero logit vector has cosine 0 with anything (torch clamps the norms), so D = 1 there
    instead of NaN. The clamp removes rounding that could push D slightly below 0.
    """
    cos = F.cosine_similarity(student_logits, teacher_logits, dim=-1, eps=1e-12)
    return (1.0 - cos).clamp(0.0, 2.0)


def compute_datw(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    tau: float,
    mode: WeightingMode = "datw",
    eps: float = 1e-8,
    grad: bool = False,
) -> DATWTerms:
    """Per-sample teacher weights plus the confidences and discrepancies behind them.

    Paper: §3.3, Eq. 4 (C_k), Eq. 5 (D_k), Eq. 6 (omega_k = s_k / (sum_j s_j + eps),
    s_k = C_k * D_k); Table 5 for the ablation modes. Readings (method notes, DATW 1-3, 6):

    * ``uniform``: omega = 1/K ("Average" row); ``confidence``: s_k = C_k;
      ``discrepancy``: s_k = D_k; ``datw``: s_k = C_k * D_k.
    * Deviation: where sum_j s_j < eps (e.g. the student already agrees with every teacher)
      the row falls back to 1/K; the literal Eq. 6 would give omega -> 0, z_target -> 0 and
      pull the student towards a uniform prediction.
    * Computed in float64: in float32, 1 - cos of identical vectors is ~1e-7, which is above
      eps, so the fallback would never trigger in the very case it exists for.
    * No gradient by default (``grad=False``): the weights are treated as constants of the
      target. ``grad=True`` lets gradients flow through D_k into the student.

    Rows sum to sum_j s_j / (sum_j s_j + eps), i.e. to 1 within eps / sum_j s_j (exactly 1
    on fallback rows and in ``uniform`` mode). K >= 1 teachers of shape (B, N) each.
    """
    if mode not in WEIGHTING_MODES:
        raise ValueError(f"unknown weighting mode {mode!r}; known: {', '.join(WEIGHTING_MODES)}")
    teachers = list(teacher_logits)
    if not teachers:
        raise ValueError("DATW needs at least one teacher")
    for t in teachers:
        if student_logits.dim() != 2 or t.shape != student_logits.shape:
            raise ValueError(
                f"DATW: teacher logits {tuple(t.shape)} do not match student logits "
                f"{tuple(student_logits.shape)} (expected (B, N))"
            )
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        z_s = student_logits.double().unsqueeze(1)  # (B, 1, N)
        z_t = torch.stack([t.detach().double() for t in teachers], dim=1)  # (B, K, N)
        confidence = teacher_confidence(z_t, tau)
        discrepancy = student_teacher_discrepancy(z_s, z_t)
        b, k = confidence.shape
        uniform = torch.full_like(confidence, 1.0 / k)
        if mode == "uniform":
            weights = uniform
            fallback = torch.zeros(b, dtype=torch.bool, device=confidence.device)
        else:
            score = {"confidence": confidence, "discrepancy": discrepancy}.get(
                mode, confidence * discrepancy
            )
            total = score.sum(dim=1, keepdim=True)
            fallback = total < eps
            weights = torch.where(fallback, uniform, score / (total + eps))
            fallback = fallback.squeeze(1)
        out_dtype = torch.float32
        return DATWTerms(
            weights.to(out_dtype),
            confidence.to(out_dtype),
            discrepancy.to(out_dtype),
            fallback,
        )


def teacher_weights(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    tau: float,
    mode: WeightingMode = "datw",
    eps: float = 1e-8,
    grad: bool = False,
) -> Tensor:
    """DATW weights omega, shape (B, K), one row per sample (Eq. 4-6, Table 5).

    See :func:`compute_datw` for the readings and deviations; this returns only the weights.
    """
    return compute_datw(student_logits, teacher_logits, tau, mode, eps, grad).weights
