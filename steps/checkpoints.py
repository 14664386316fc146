"""Where a training step keeps its checkpoints, so that re-running a crashed step resumes it."""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from dtkd_ops.home import dtkd_home


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
