"""Per-head forms of the logit losses for multi-head models (dtkd.data.heads).

Not in the DT-KD paper (single-label video classification). The reading used here: every
logit-level term is applied to each head on its own (its own softmax, temperature, DATW
weights) and the per-head values are summed, as the per-head cross-entropies are summed in
EPIC-KITCHENS baselines (TSN/TSM/SlowFast verb+noun heads, weight 1 each). Feature-level
terms are computed once, on the shared backbone.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

from dtkd.data.heads import HeadLayout

from ._common import zero_with_graph


def multihead_cross_entropy(logits: Tensor, target: Tensor, layout: HeadLayout, label_smoothing: float = 0.0,
                            weights: Optional[Mapping[str, float]] = None) -> Tensor:
    """sum_h w_h * CE(logits_h, y_h) over the labelled clips (code -1: unlabelled, skipped;
    0 with a graph when none is labelled). ``weights`` default to 1 per head."""
    labelled = target >= 0
    if not bool(labelled.any()):
        return zero_with_graph(logits)
    parts = layout.split(logits[labelled].float())
    ys = layout.decode(target[labelled])
    total = None
    for name in layout.names:
        w = 1.0 if weights is None else float(weights.get(name, 1.0))
        term = w * F.cross_entropy(parts[name], ys[name], label_smoothing=label_smoothing)
        total = term if total is None else total + term
    return total


def per_head(loss: Callable[..., Tensor], layout: HeadLayout, student: Tensor, teachers: Sequence[Tensor],
             *args, target: Optional[Tensor] = None, **kwargs) -> Tensor:
    """sum_h loss(student_h, [teacher_h, ...], *args, **kwargs): a logit loss of one student and
    K teachers applied to each head's slice of the logits. With ``target`` (label codes), each
    head's class indices are passed as ``target=`` too (losses that need the true class: DKD)."""
    s = layout.split(student)
    t = [layout.split(z) for z in teachers]
    y = layout.decode(target) if target is not None else None
    total = None
    for name in layout.names:
        extra = kwargs if y is None else {**kwargs, "target": y[name]}
        value = loss(s[name], [z[name] for z in t], *args, **extra)
        total = value if total is None else total + value
    return total
