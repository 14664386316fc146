"""The contract between the Trainer and what it trains.

The Trainer (``dtkd.engine.trainer``) trains a :class:`TrainingModule` and calls nothing else on
it: ``setup`` once before the first step, ``set_epoch`` before each epoch, ``forward`` every step,
``trainable_parameters`` for the optimiser, ``training_state_dict``/``load_training_state_dict``
for checkpoints, and reads ``student`` to validate. A distiller (``dtkd.distill.Distiller``) is one;
teacher fine-tuning is the distiller ``none``. Everything specific to distillation (cached teacher
outputs, the closed-form projection fit) happens inside ``setup`` and reaches the loop only
through the :class:`TrainPlan` it returns.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


@dataclass
class StepOutput:
    logits: Tensor  # student logits (B, N), with graph
    losses: dict[str, Tensor]  # named terms, unweighted and detached, for logging
    loss: Tensor  # total to back-propagate


@dataclass(frozen=True)
class RunContext:
    """What the Trainer tells a module in ``setup``: where and how this run trains."""

    device: torch.device
    amp_dtype: Optional[torch.dtype]  # autocast dtype, None = full precision
    channels_last: bool
    batch_size: int  # per process
    loader_kwargs: Mapping[str, Any]  # num_workers, pin_memory, collate_fn of the training loader
    work_dir: Optional[Path]  # the run's checkpoint directory (reached by every DDP rank), or None
    resumed: bool  # True: the module's state will be loaded from a checkpoint right after setup
    progress: bool  # show progress bars (rank 0)


def _nothing() -> None:
    return None


@dataclass
class TrainPlan:
    """What the loop draws, as decided by the module in ``setup``.

    ``data``: the training items (a ``SeededViews``; may render fewer views than the dataset the
    Trainer was given, e.g. only the student's when the teachers' outputs are cached).
    ``num_views``: None = a fresh augmentation of every clip each epoch; N = every clip has N fixed
    views (``view_id`` < N) and the sampler cycles through them.
    ``extras(batch)``: extra keyword arguments of ``forward`` for a batch (e.g. cached teacher
    outputs), or None. ``close()``: releases what ``setup`` acquired; the Trainer calls it when
    ``fit`` ends, however it ends.
    """

    data: Dataset
    num_views: Optional[int] = None
    extras: Optional[Callable[[Mapping[str, Any]], dict]] = None
    close: Callable[[], None] = field(default=_nothing)


class TrainingModule(nn.Module, ABC):
    """Base class of everything the Trainer trains; subclasses set ``self.student`` in __init__."""

    student: nn.Module
    # A multi-head student (dtkd.data.heads.HeadLayout): the Trainer counts a clip right when every
    # head is (the action) and validates with the heads' summed CE. None: one label per clip.
    heads: Optional[Any] = None

    @abstractmethod
    def forward(self, inputs: Mapping[str, Tensor], target: Tensor, **extras: Any) -> StepOutput:
        """One training step's outputs for a batch of views (``inputs[STUDENT_VIEW]`` and any
        teacher views) and its labels; ``extras`` are what ``TrainPlan.extras`` gave."""

    def setup(self, data: Dataset, ctx: RunContext) -> TrainPlan:
        """Called once per ``fit`` before the first step, after the module was moved to the device.
        ``data`` is the seeded training dataset; return what the loop should draw."""
        return TrainPlan(data)

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to run (e.g. DKD's warm-up)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def training_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint keeps: everything but frozen parameters (the teachers)."""
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_training_state_dict(self, state: Mapping[str, Tensor]) -> None:
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        missing, unexpected = self.load_state_dict(dict(state), strict=False)
        missing = sorted(set(missing) - frozen)
        if missing or unexpected:
            raise KeyError(f"training state does not fit this module: missing {missing[:5]}, unexpected {unexpected[:5]}")
