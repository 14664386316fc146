"""Training engine: one Trainer for teachers and distillation, DDP, checkpoints, teacher cache.

Exports are lazy so that ``dtkd.config`` can import ``TrainConfig`` without pulling in the
whole engine.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "dtkd.engine.config",
    "Trainer": "dtkd.engine.trainer",
    "TrainResult": "dtkd.engine.trainer",
    "NonFiniteLossError": "dtkd.engine.trainer",
    "Callback": "dtkd.engine.callbacks",
    "History": "dtkd.engine.callbacks",
    "CheckpointManager": "dtkd.engine.checkpoint",
    "TeacherCache": "dtkd.engine.teacher_cache",
    "SeededViews": "dtkd.engine.sampling",
    "EpochSampler": "dtkd.engine.sampling",
    "ViewKey": "dtkd.engine.sampling",
    "DistInfo": "dtkd.engine.distributed",
    "init_from_env": "dtkd.engine.distributed",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dtkd.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
