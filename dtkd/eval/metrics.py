"""Test-set evaluation: top-k accuracy, loss and a confusion matrix, with multi-view averaging."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtkd.data.views import STUDENT_VIEW


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    n: int
    confusion: np.ndarray  # (K, K): rows are true classes, columns predictions
    per_class: list[float] = field(default_factory=list)  # recall of each class

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}top1": self.top1, f"{prefix}top5": self.top5, f"{prefix}loss": self.loss}


def topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> int:
    """Number of rows whose target is among the k largest logits (k is capped at the class count)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == target[:, None]).any(dim=1).sum())


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
) -> EvalResult:
    """Evaluate ``model`` on ``loader`` batches of ``{"inputs": {view: clips}, "label": y}``."""
    was_training = model.training
    model.eval().to(device)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
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
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct1 += topk_correct(logits, target, 1)
        correct5 += topk_correct(logits, target, 5)
        n += len(target)
        pred = logits.argmax(dim=1)
        np.add.at(confusion, (target.cpu().numpy(), pred.cpu().numpy()), 1)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty loader: the test split has no clips")
    support = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / s) if s else float("nan") for i, s in enumerate(support)]
    return EvalResult(correct1 / n, correct5 / n, loss_sum / n, n, confusion, per_class)
