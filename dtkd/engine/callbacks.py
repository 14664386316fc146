"""Trainer callbacks: how metrics leave the engine (MLflow logging lives in steps/)."""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class Callback(Protocol):
    """Any object with ``on_epoch_end``; the other hooks are optional (duck-typed).

    Hooks run on rank 0 only. ``metrics`` values are Python floats/ints.
    * ``on_train_start(trainer)``
    * ``on_step_end(step, metrics)`` every ``log_every`` optimiser steps (running means)
    * ``on_epoch_end(epoch, metrics)``
    * ``on_train_end(result)``
    """

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None: ...


def dispatch(callbacks, hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


class History:
    """Keeps every call it gets; handy in tests and notebooks."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict]] = []
        self.epochs: list[tuple[int, dict]] = []

    def on_step_end(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.steps.append((step, dict(metrics)))

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        self.epochs.append((epoch, dict(metrics)))
