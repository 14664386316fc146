"""Optimisers and per-step learning-rate schedules built from a TrainConfig."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from dtkd.engine.config import TrainConfig


def param_groups(named: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig) -> list[dict]:
    """Split trainable parameters into a decayed group and an undecayed one (norms, biases)."""
    decay, no_decay = [], []
    for _, p in named:
        if not p.requires_grad:
            continue
        (decay if cfg.decay_norm_and_bias or p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not decay and not no_decay:
        raise ValueError("no trainable parameters: is everything frozen?")
    return [g for g in groups if g["params"]]


def build_optimizer(named: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(named, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


class LRFactor:
    """lr(step) / base_lr for a schedule stepped once per optimiser step.

    Warm-up is linear, (step + 1) / warmup_steps, and multiplies the main schedule, so
    the first step already trains. ``multistep`` decays by ``gamma`` at each milestone
    epoch (as the paper's epoch-wise MultiStepLR would); ``cosine`` anneals from 1 to
    ``min_lr_ratio`` over the steps after warm-up. A plain class, not a lambda, so that
    LambdaLR can be pickled with the checkpoint.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.kind = cfg.scheduler
        self.steps_per_epoch = steps_per_epoch
        self.total = cfg.epochs * steps_per_epoch
        self.warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.milestones = [m * steps_per_epoch for m in cfg.milestones]
        self.gamma = cfg.gamma
        self.floor = cfg.min_lr_ratio

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.kind == "multistep":
            main = self.gamma ** sum(step >= m for m in self.milestones)
        elif self.kind == "cosine":
            span = max(1, self.total - self.warmup)
            t = min(1.0, max(0, step - self.warmup) / span)
            main = self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            main = 1.0
        return warm * main


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, LRFactor(cfg, steps_per_epoch))
