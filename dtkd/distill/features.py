"""Feature-map plumbing shared by the feature losses: grid alignment, pooling, taps."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

TapFactory = Callable[[nn.Module, Any], Any]


def check_5d(t: Tensor, what: str) -> None:
    if t.dim() != 5:
        raise ValueError(f"{what}: expected a 5-D feature map (B, C, T, H, W), got {tuple(t.shape)}")


def align_to_grid(feat: Tensor, grid: Sequence[int]) -> Tensor:
    """Adaptive average pooling of a (B, C, T, H, W) map to the (T, H, W) ``grid``.

    Method notes, SDD 2: teachers and student may see different clip sizes, so every map is
    brought to the student's grid. Adaptive pooling also up-samples (by replication) when the
    target axis is longer, e.g. 8 ViT time steps onto 13 student steps.
    """
    check_5d(feat, "align_to_grid")
    grid = tuple(int(g) for g in grid)
    if tuple(feat.shape[2:]) == grid:
        return feat
    return F.adaptive_avg_pool3d(feat, grid)


def global_pool(feat: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B, C) global average, the embedding RKD compares."""
    check_5d(feat, "global_pool")
    return feat.mean(dim=(2, 3, 4))


def default_tap_factory() -> TapFactory:
    """``dtkd.models.FeatureTap`` (forward hooks, 5-D maps, ViT tokens on their grid)."""
    from dtkd.models import FeatureTap  # imported late: dtkd.models is built in parallel

    return FeatureTap
