"""Structure-discrepancy masks and L_SD, paper §3.4, Eq. 9, 10 and 12."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..features import align_to_grid, check_5d


def quantile_mask(score: Tensor, q: float) -> Tensor:
    """Per-sample mask of the locations strictly above the sample's q-quantile.

    ``score`` is (B, ...). With L locations per sample, the threshold is the k-th smallest
    value, k = floor(q * L), found with ``kthvalue`` per row (method notes, SDD 4:
    ``torch.quantile`` refuses large inputs). Distinct values keep exactly L - k locations;
    ties at the threshold are dropped (Eq. 9-10 use a strict ">"). q = 0 keeps everything,
    q = 1 nothing.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    b = score.shape[0]
    flat = score.detach().reshape(b, -1).float()
    k = math.floor(q * flat.shape[1] + 1e-9)  # the epsilon absorbs 0.29 * 100 = 28.999...
    if k <= 0:
        return torch.ones_like(score, dtype=torch.bool)
    threshold = flat.kthvalue(k, dim=1, keepdim=True).values
    return (flat > threshold).reshape(score.shape)


def structure_masks(residual: Tensor, cnn_feat: Tensor, zeta: float, rho: float) -> Tensor:
    """M_res AND M_act as a bool (B, 1, T, H, W) mask (Eq. 9-10 and their intersection).

    Paper: §3.4. Eq. 9 thresholds "f_res(i, j)", a multi-channel map; dtkd's reading (method
    notes, SDD 4) scores each location by the channel mean of |f_res| and keeps the locations
    above the per-sample zeta-quantile. Eq. 10: the channel mean of the CNN teacher's map
    (signed, as written), above its per-sample rho-quantile. Quantiles are over all T*H*W
    locations of a sample, not per frame. ``cnn_feat`` is pooled to the residual's grid if
    needed. No gradient: the masks select, they are not learned.
    """
    check_5d(residual, "structure_masks(residual)")
    check_5d(cnn_feat, "structure_masks(cnn_feat)")
    if residual.shape[0] != cnn_feat.shape[0]:
        raise ValueError("structure_masks: residual and CNN features have different batch sizes")
    with torch.no_grad():
        cnn_feat = align_to_grid(cnn_feat.detach().float(), residual.shape[2:])
        res_score = residual.detach().float().abs().mean(dim=1, keepdim=True)
        act_score = cnn_feat.mean(dim=1, keepdim=True)
        return quantile_mask(res_score, zeta) & quantile_mask(act_score, rho)


def sd_loss(pred_residual: Tensor, residual: Tensor, mask: Tensor) -> Tensor:
    """L_SD: squared error between g_SDB(f_S) and f_res over the masked elements (Eq. 12).

    Paper: §3.4, Eq. 12 writes a squared norm (a sum). Deviation (method notes, SDD 6): the
    sum is divided by the number of masked elements (masked locations x channels), so that
    beta does not scale with the feature size or the mask. The residual is a fixed target
    (detached). An empty mask gives 0 that still depends on ``pred_residual`` (backward works,
    the gradient is 0), never 0/0. ``mask`` is bool (B, 1, T, H, W) or (B, C, T, H, W).
    """
    check_5d(pred_residual, "sd_loss(pred_residual)")
    if pred_residual.shape != residual.shape:
        raise ValueError(
            f"sd_loss: prediction {tuple(pred_residual.shape)} and residual "
            f"{tuple(residual.shape)} differ"
        )
    mask = mask.to(device=pred_residual.device, dtype=torch.bool).expand_as(pred_residual)
    diff = pred_residual.float() - residual.detach().float()
    # Select before squaring (not multiply by the mask): a non-finite value outside the mask
    # then reaches neither the loss nor the gradient.
    diff = torch.where(mask, diff, torch.zeros_like(diff))
    count = mask.sum().clamp_min(1).to(diff.dtype)
    return diff.square().sum() / count
