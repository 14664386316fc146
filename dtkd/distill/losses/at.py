"""Attention transfer (Zagoruyko and Komodakis 2016), the "ATKD" baseline, on video maps."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..features import align_to_grid, check_5d


def attention_maps(feat: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention per frame: mean_c |A_c|^p, (B, C, T, H, W) -> (B, T, H, W)."""
    check_5d(feat, "attention_maps")
    return feat.float().abs().pow(p).mean(dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Squared distance between per-frame L2-normalised attention maps, averaged over frames.

    Zagoruyko and Komodakis 2016, "Paying more attention to attention", the AT loss (§3) with
    F(A) = sum_c |A_c|^p (here the channel mean: a scale that the normalisation removes).
    Video reading: one attention map per frame; the teacher's map (energy, computed at its own
    resolution) is adaptively average-pooled to the student's (T, H, W) grid, then every frame
    is L2-normalised over H*W. Deviations: like the authors' released code, the squared
    distance is used instead of the paper's unsquared p-norm; unlike it, the squared distance
    is summed over the H*W locations (the paper's norm) and averaged over (B, T) only. Their code
    also averages over H*W, which makes the loss scale with 1/(H*W): with their beta on CIFAR's
    8x8-32x32 maps a 2x2 video grid would get 16-256x their weight (the study's AT collapsed to
    18% top-1 that way). The paper's beta/2 belongs in the loss weight. Channel counts may
    differ. Teacher detached.
    """
    check_5d(student_feat, "at_loss(student_feat)")
    check_5d(teacher_feat, "at_loss(teacher_feat)")
    a_s = attention_maps(student_feat, p)
    a_t = attention_maps(teacher_feat.detach(), p)
    a_t = align_to_grid(a_t.unsqueeze(1), a_s.shape[1:]).squeeze(1)
    q_s = F.normalize(a_s.flatten(2), dim=-1)  # (B, T, H*W), one unit vector per frame
    q_t = F.normalize(a_t.flatten(2), dim=-1)
    return (q_s - q_t).square().sum(-1).mean()
