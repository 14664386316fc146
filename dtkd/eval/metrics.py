"""Test-set evaluation: top-k accuracy, loss and a confusion matrix, with multi-view averaging."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtkd.data.views import STUDENT_VIEW
from dtkd.data.heads import HeadLayout


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    n: int
    confusion: np.ndarray  # (K, K): rows are true classes, columns predictions
    per_class: list[float] = field(default_factory=list)  # recall of each class
    # multi-head models: <head>_top1/_top5 and action_top1/_top5 (top1/top5 are then the action's)
    heads: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}top1": self.top1, f"{prefix}top5": self.top5, f"{prefix}loss": self.loss,
                **{f"{prefix}{k}": v for k, v in self.heads.items()}}


def topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> int:
    """Number of rows whose target is among the k largest logits (k is capped at the class count)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == target[:, None]).any(dim=1).sum())


def top1_correct(logits: torch.Tensor, target: torch.Tensor, heads: HeadLayout | None = None) -> torch.Tensor:
    """Rows predicted right, as a 0-d tensor (no host sync): argmax == target, or for a
    multi-head model every head's argmax right (the action)."""
    if heads is None:
        return (logits.argmax(1) == target).sum()
    ys = heads.decode(target)
    right = None
    for name, part in heads.split(logits).items():
        hit = part.argmax(1) == ys[name]
        right = hit if right is None else right & hit
    return right.sum()


def cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor, heads: HeadLayout | None = None) -> torch.Tensor:
    """CE summed over the rows (0-d tensor); a multi-head model's is the heads' CEs added."""
    if heads is None:
        return F.cross_entropy(logits, target, reduction="sum")
    ys = heads.decode(target)
    return sum(F.cross_entropy(part, ys[name], reduction="sum") for name, part in heads.split(logits).items())


def action_scores(logits: torch.Tensor, heads: HeadLayout) -> torch.Tensor:
    """(B, total) -> (B, prod of sizes) log-scores of every combination: the sum of the heads'
    log-softmax, i.e. the product of their probabilities (EPIC-KITCHENS' action score,
    verb probability x noun probability), indexed by the mixed-radix code of HeadLayout."""
    out = None
    for part in heads.split(logits.float()).values():
        lp = F.log_softmax(part, dim=1)
        out = lp if out is None else (out[:, :, None] + lp[:, None, :]).flatten(1)
    return out


def head_counts(logits: torch.Tensor, target: torch.Tensor, heads: HeadLayout) -> dict[str, int]:
    """Correct counts ``<head>_top1/_top5`` and ``action_top1/_top5``. Action top-1: every head's
    argmax right (= the argmax of the action score); action top-5: the true combination among
    the 5 best action scores (:func:`action_scores`), the EPIC-KITCHENS convention."""
    ys = heads.decode(target)
    out = {}
    for name, part in heads.split(logits).items():
        out[f"{name}_top1"] = topk_correct(part, ys[name], 1)
        out[f"{name}_top5"] = topk_correct(part, ys[name], 5)
    out["action_top1"] = int(top1_correct(logits, target, heads))
    out["action_top5"] = topk_correct(action_scores(logits, heads), target, 5)
    return out


def view_averaged_logits(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Logits of (B, C, T, H, W) clips, or the mean softmax-free logits over V views of (B, V, C, T, H, W)."""
    if clips.dim() == 5:
        return model(clips)
    b, v = clips.shape[:2]
    return model(clips.flatten(0, 1)).view(b, v, -1).mean(dim=1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    num_classes: int,
    view: str = STUDENT_VIEW,
    device: str | torch.device = "cpu",
    progress: bool = False,
    heads: HeadLayout | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``loader`` batches of ``{"inputs": {view: clips}, "label": y}``.

    ``heads``: a multi-head model (labels are HeadLayout codes): ``top1``/``top5`` are the
    action's, ``heads`` holds every head's and the action's top-1/top-5 (:func:`head_counts`),
    ``loss`` is the heads' summed CE, and ``confusion``/``per_class`` are the first head's
    (``num_classes`` is then ignored)."""
    was_training = model.training
    model.eval().to(device)
    if heads is not None:
        num_classes = heads.sizes[0]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    counts: dict[str, int] = {}
    correct1 = correct5 = n = 0
    loss_sum = 0.0
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="evaluate", leave=False)
    for batch in batches:
        clips = batch["inputs"][view].to(device, non_blocking=True)
        target = torch.as_tensor(batch["label"]).to(device)
        logits = view_averaged_logits(model, clips).float()
        n += len(target)
        loss_sum += float(cross_entropy_sum(logits, target, heads))
        if heads is not None:
            for k, v in head_counts(logits, target, heads).items():
                counts[k] = counts.get(k, 0) + v
            first = heads.names[0]
            pred, target = heads.split(logits)[first].argmax(dim=1), heads.decode(target)[first]
        else:
            correct1 += topk_correct(logits, target, 1)
            correct5 += topk_correct(logits, target, 5)
            pred = logits.argmax(dim=1)
        np.add.at(confusion, (target.cpu().numpy(), pred.cpu().numpy()), 1)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty loader: the test split has no clips")
    support = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / s) if s else float("nan") for i, s in enumerate(support)]
    if heads is not None:
        rates = {k: v / n for k, v in counts.items()}
        return EvalResult(rates["action_top1"], rates["action_top5"], loss_sum / n, n, confusion, per_class, rates)
    return EvalResult(correct1 / n, correct5 / n, loss_sum / n, n, confusion, per_class)
