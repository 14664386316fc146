"""Small, fast stand-ins for the engine tests: a dataset with random augmentation and a
distiller (a ``dtkd.distill.Distiller`` with its own toy loss) over BN-free models.

BN-free on purpose: DDP equivalence needs per-sample independent forward passes (batch norm
in train mode normalises over the *local* batch, which differs between 1 and 2 processes).
Tests that need the real dtkd models/distillers use them directly when they exist.
"""
from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset

from dtkd.distill import DistillConfig, Distiller, TeacherRef
from dtkd.engine import StepOutput
from dtkd.engine.config import TrainConfig

NUM_CLASSES = 3


class ToyClips(Dataset):
    """Clips whose class is a per-class pattern plus noise; training items get a random
    temporal shift, spatial jitter and flip drawn from the GLOBAL RNGs (python, numpy and
    torch), as a real video dataset would. ``nan_indices`` items are NaN (to make a
    non-finite loss). Views: "student" (4x8x8) and optional teacher views."""

    def __init__(self, n: int = 24, views=("student",), train: bool = True, nan_indices=(), seed: int = 0) -> None:
        patterns = torch.randn(NUM_CLASSES, 3, 6, 10, 10, generator=torch.Generator().manual_seed(1234))
        self.labels = torch.arange(n) % NUM_CLASSES
        noise = torch.randn(n, 3, 6, 10, 10, generator=torch.Generator().manual_seed(seed))
        self.base = patterns[self.labels] + 0.5 * noise  # class patterns shared by all splits
        self.views, self.train, self.nan = tuple(views), train, set(nan_indices)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        clip = self.base[index]
        if self.train:
            t = random.randint(0, 2)
            y, x = np.random.randint(0, 3, size=2)
            clip = clip[:, t : t + 4, y : y + 8, x : x + 8]
            if torch.rand(()) < 0.5:
                clip = clip.flip(-1)
        else:
            clip = clip[:, 1:5, 1:9, 1:9]
        clip = clip.clone()
        if index in self.nan:
            clip.fill_(float("nan"))
        return {"inputs": {v: clip for v in self.views}, "label": int(self.labels[index]), "index": index}

    def content_key(self) -> str:
        return f"toy:{len(self)}:{self.seed}:{self.train}:{sorted(self.nan)}"

    def with_views(self, names) -> "ToyClips":
        subset = copy.copy(self)
        subset.views = tuple(names)
        return subset


class ToyNet(nn.Module):
    """Conv3d -> [BatchNorm3d] -> ReLU -> Conv3d -> ReLU -> mean pool -> Linear; normalisation
    only with ``norm`` (its running statistics are buffers a forward pass moves)."""

    def __init__(self, width: int = 8, num_classes: int = NUM_CLASSES, dropout: float = 0.0, norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm3d(width) if norm else nn.Identity()
        self.conv2 = nn.Conv3d(width, width, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.conv2(F.relu(self.norm(self.conv1(x)))))
        self.features = f
        return self.head(self.drop(f.mean(dim=(2, 3, 4))))


class ToyDistiller(Distiller):
    """CE (+ KD on the mean teacher logits + MSE to the mean teacher features when teachers
    are given), with a trainable 1x1x1 projection as the distillation head. The engine sees a
    real Distiller: ``cache_views`` > 0 caches the teachers in ``setup``, as DT-KD does."""

    name = "toy"

    def __init__(self, student: nn.Module, teachers: dict[str, nn.Module] | None = None, tau: float = 2.0,
                 cache_views: int = 0, **distill) -> None:
        refs = [TeacherRef(name, model, None, name) for name, model in (teachers or {}).items()]
        super().__init__(DistillConfig(method="none", teacher_cache_views=cache_views, **distill), student, None, refs)
        self._use_teachers(self.teacher_names, features=True)
        width = student.conv2.out_channels
        self.proj = nn.Conv3d(width, width, 1) if self.teachers else None
        self.tau = tau
        self.teacher_calls = 0

    @torch.no_grad()
    def teacher_forward(self, batch_inputs: dict, names=None, features: bool = True) -> dict:
        self.teacher_calls += 1
        out = {}
        for name, t in self.teachers.items():
            logits = t(batch_inputs[name])
            out[name] = {"logits": logits, "features": t.features}
        return out

    def forward(self, batch_inputs: dict, target: torch.Tensor, teacher_outputs: dict | None = None) -> StepOutput:
        logits = self.student(batch_inputs["student"])
        losses = {"ce": F.cross_entropy(logits.float(), target)}
        if len(self.teachers):
            t = teacher_outputs if teacher_outputs is not None else self.teacher_forward(batch_inputs)
            t_logits = torch.stack([v["logits"].float() for v in t.values()]).mean(0)
            t_feat = torch.stack([v["features"].float() for v in t.values()]).mean(0)
            p = F.log_softmax(logits.float() / self.tau, dim=1)
            q = F.softmax(t_logits / self.tau, dim=1)
            losses["kd"] = F.kl_div(p, q, reduction="batchmean") * self.tau**2
            losses["feat"] = F.mse_loss(self.proj(self.student.features).float(), t_feat)
        return StepOutput(logits, losses, sum(losses.values()))


def toy_distiller(teachers: bool = False, seed: int = 0, dropout: float = 0.0, cache_views: int = 0,
                  norm: bool = False) -> ToyDistiller:
    torch.manual_seed(1000)  # teachers: fixed "pretrained" weights whatever the student seed
    tmap = {"cnn": ToyNet(width=8), "vit": ToyNet(width=8)} if teachers else None
    torch.manual_seed(seed)
    student = ToyNet(dropout=dropout, norm=norm)
    return ToyDistiller(student, tmap, cache_views=cache_views)


def fast_cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=0.05, milestones=[], weight_decay=1e-4, log_every=1, amp="off")
    base.update(kw)
    return TrainConfig(**base)


def weights(distiller: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in distiller.student.state_dict().items()}


def make_job(config_path: str, args):
    """Factory for ``python -m dtkd.launch --factory engine_helpers:make_job``."""
    from dtkd.assemble import Job

    spec = yaml.safe_load(open(config_path))
    distiller = toy_distiller(teachers=spec.get("teachers", False), seed=spec.get("model_seed", 0),
                              dropout=spec.get("dropout", 0.0), cache_views=spec.get("cache_views", 0))
    views = ("student", "cnn", "vit") if spec.get("teachers") else ("student",)
    callbacks = []
    if "kill_at_step" in spec:
        callbacks.append(KillAt(spec["kill_at_step"]))
    return Job(
        module=distiller,
        train=ToyClips(spec.get("n", 24), views=views, nan_indices=spec.get("nan_indices", ())),
        val=ToyClips(spec.get("n_val", 9), train=False, seed=1),
        train_cfg=TrainConfig(**spec["train"]),
        callbacks=callbacks,
    )


class KillAt:
    """SIGKILLs its own process at a given optimiser step: a crash with no clean-up at all."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int, metrics: dict) -> None:
        if step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        pass
