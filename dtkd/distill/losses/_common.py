"""Small helpers shared by the logit losses."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kl_batchmean(target_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(softmax(target) || softmax(student)), summed over classes, averaged over the batch.

    Both arguments are already divided by the temperature. Computed in float32 from
    log-probabilities on both sides (``log_target=True``) so that a saturated teacher
    (p -> 0) gives 0 * finite instead of 0 * log 0.
    """
    log_p = F.log_softmax(target_logits.float(), dim=-1)
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def check_logits(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.dim() != 2 or teacher.shape != student.shape:
        raise ValueError(
            f"{what}: expected student and teacher logits of the same shape (B, N), got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def zero_with_graph(t: Tensor) -> Tensor:
    """A float32 zero that still depends on ``t``, so backward() works when a loss is empty."""
    return t.float().sum() * 0.0
