"""Distance-wise relational KD, paper §3.5, Eq. 13 (Park et al. 2019, RKD-D)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import zero_with_graph


def pair_distances(emb: Tensor) -> Tensor:
    """Euclidean distances of the distinct pairs i < j of a (B, D) batch, shape (B(B-1)/2,).

    Computed from explicit differences (not the Gram trick, which cancels badly for close
    points); memory O(B^2 D / 2). The clamp keeps sqrt's gradient finite for identical rows.
    """
    b = emb.shape[0]
    i, j = torch.triu_indices(b, b, offset=1, device=emb.device)
    return (emb[i] - emb[j]).square().sum(dim=-1).clamp_min(1e-12).sqrt()


def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """L_RKD = mean over pairs of SmoothL1(d_S / mean d_S, d_T / mean d_T), beta = 1 (Eq. 13).

    Paper: §3.5, Eq. 13, after Park et al. 2019 (distance-wise term). Readings (method
    notes, Eq. 13): P is the set of *distinct* pairs i < j, and each side is divided by the
    mean over those pairs. Deviation from the common reference code, which averages over the
    full B x B matrix with its zero diagonal (and normalises by the mean of the positive
    entries): dtkd follows the equation. The teacher side carries no gradient. Inputs of any
    shape (B, ...) are flattened per sample; B < 2 has no pair and gives 0. Invariant to a
    global scale of either embedding and to a permutation of the batch.
    """
    if student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError("rkd_distance_loss: student and teacher batch sizes differ")
    b = student_emb.shape[0]
    s = student_emb.reshape(b, -1).float()
    if b < 2:
        return zero_with_graph(s)
    d_s = pair_distances(s)
    d_s = d_s / d_s.mean().clamp_min(1e-12)
    with torch.no_grad():
        d_t = pair_distances(teacher_emb.detach().reshape(b, -1).float())
        d_t = d_t / d_t.mean().clamp_min(1e-12)
    return F.smooth_l1_loss(d_s, d_t, beta=1.0, reduction="mean")
