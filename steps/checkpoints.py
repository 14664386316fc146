"""Where a training step keeps its checkpoints, so that re-running a crashed step resumes it."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from dtkd_ops.home import dtkd_home

log = logging.getLogger(__name__)
KEEP_ENV = "DTKD_KEEP_CHECKPOINTS"  # 1: keep a finished step's checkpoints (and teacher cache)


def state_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state (names and tensor bytes): which teacher a student learnt from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_dir(step_name: str, *inputs) -> str:
    """A directory keyed by the step and everything that determines its training (its stage's
    config, manifest fingerprint): a re-run with the same inputs resumes where the last attempt
    stopped, mid-epoch included; different inputs never pick up a foreign checkpoint."""
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return str(dtkd_home() / "checkpoints" / step_name / key)


@contextmanager
def step_checkpoints(step_name: str, *inputs) -> Iterator[str]:
    """:func:`checkpoint_dir` for the block's training. Kept when the block fails (a rerun resumes
    from it; the trainer keeps ``training.keep_last`` of them meanwhile) and removed when it
    succeeds: the step's result then becomes its artifact and a rerun is served from ZenML's
    cache, so the ~MBs per configuration would only pile up. ZenML stores outputs after the step
    function returns, so a failure in that storing retrains the step instead of resuming it.
    ``DTKD_KEEP_CHECKPOINTS=1`` keeps them."""
    directory = checkpoint_dir(step_name, *inputs)
    yield directory
    if os.environ.get(KEEP_ENV, "").lower() in ("1", "true", "yes"):
        return
    shutil.rmtree(directory, ignore_errors=True)
    log.info("removed the checkpoints of the finished step (%s=1 keeps them): %s", KEEP_ENV, directory)
