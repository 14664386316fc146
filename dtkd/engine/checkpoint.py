"""Atomic, self-pruning training checkpoints and RNG state capture.

A checkpoint is one ``torch.save`` dict of plain containers and tensors, so it loads with
``weights_only=True``. Files are written to a temp name, fsynced and ``os.replace``d: a
crash (even SIGKILL) mid-write leaves the previous checkpoints untouched.
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtkd.fsutil import naming_disk_full

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming_disk_full(path, "a checkpoint"), open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync_dir(d: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Python, numpy, torch and (if initialised) CUDA RNG states as weights_only-safe values."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """``ckpt-<global step>.pt`` files in one directory, keeping the newest ``keep_last``."""

    def __init__(self, directory: str | Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.dir = Path(directory)
        self.keep_last = keep_last

    def path_for(self, global_step: int) -> Path:
        return self.dir / f"ckpt-{global_step:09d}.pt"

    def list(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict, global_step: int) -> Path:
        path = atomic_save(state, self.path_for(global_step))
        for old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    def load_latest(self, map_location: Any = "cpu") -> tuple[Path, dict] | None:
        """The newest checkpoint that loads; an unreadable one is skipped with a warning."""
        for path in reversed(self.list()):
            try:
                return path, load(path, map_location)
            except Exception as err:  # noqa: BLE001 - any unreadable file: fall back to older
                log.warning("skipping unreadable checkpoint %s: %s", path, err)
        return None


def load(path: str | Path, map_location: Any = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
