"""A finished step's checkpoints are removed, a failed one's kept for the rerun to resume
(issue 13, item 8); DTKD_KEEP_CHECKPOINTS=1 keeps them."""
from __future__ import annotations

from pathlib import Path

import pytest

from steps.checkpoints import KEEP_ENV, step_checkpoints


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DTKD_HOME", str(tmp_path))
    monkeypatch.delenv(KEEP_ENV, raising=False)
    return tmp_path


def _write(directory: str) -> Path:
    path = Path(directory) / "ckpt-000000001.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    return path


def test_a_finished_step_leaves_no_checkpoint(home):
    with step_checkpoints("student", {"lr": 1}, "manifest:abc") as directory:
        ckpt = _write(directory)
    assert str(home) in directory and not ckpt.exists() and not Path(directory).exists()


def test_a_failed_step_keeps_its_checkpoint_for_the_rerun(home):
    with pytest.raises(RuntimeError, match="killed"):
        with step_checkpoints("student", {"lr": 1}, "manifest:abc") as directory:
            ckpt = _write(directory)
            raise RuntimeError("killed")
    assert ckpt.exists()
    with step_checkpoints("student", {"lr": 1}, "manifest:abc") as again:  # the same inputs: the same place
        assert again == directory and ckpt.exists()


def test_the_switch_keeps_them(home, monkeypatch):
    monkeypatch.setenv(KEEP_ENV, "1")
    with step_checkpoints("cnn_teacher", {"lr": 1}, "manifest:abc") as directory:
        ckpt = _write(directory)
    assert ckpt.exists()
