"""Atomic checkpoint writes, keep-last-N pruning, corrupt-file fallback, RNG round trips."""
import random

import numpy as np
import pytest
import torch

from dtkd.engine.checkpoint import CheckpointManager, atomic_save, load, rng_state, set_rng_state


class Explodes:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"w": torch.zeros(3), "bad": Explodes()}, path)
    assert torch.equal(load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_keeps_only_the_newest_n(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 15, 20):
        m.save({"step": step}, step)
    assert [load(p)["step"] for p in m.list()] == [15, 20]
    assert m.latest() == m.path_for(20)


def test_an_unreadable_latest_falls_back_to_the_previous(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=3)
    m.save({"step": 1}, 1)
    m.save({"step": 2}, 2)
    m.path_for(2).write_bytes(b"truncated garbage")
    path, state = m.load_latest()
    assert path == m.path_for(1) and state["step"] == 1
    assert CheckpointManager(tmp_path / "empty").load_latest() is None


def test_rng_state_round_trip_restores_every_stream(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.randn(), torch.randn(2)  # a gaussian is cached mid-stream
    atomic_save({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.randn(3).tolist(), torch.randn(4).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load(tmp_path / "r.pt")["rng"])  # weights_only load of plain values
    assert (random.random(), np.random.randn(3).tolist(), torch.randn(4).tolist()) == expected
