"""Kill a run mid-epoch, resume it, and end with exactly the weights and metrics of a run that
was never interrupted (deterministic CPU: same kernels, same data order, same RNG streams)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from engine_helpers import ToyClips, fast_cfg, toy_distiller, weights

from dtkd.engine import Trainer
from dtkd.engine.checkpoint import CheckpointManager

HERE = Path(__file__).parent
TIMING = ("epoch_time_s", "clips_per_s")


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def comparable(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


class RaiseAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt(f"injected crash at step {step}")

    def on_epoch_end(self, epoch, metrics):
        pass


def test_resume_after_an_injected_crash_matches_an_uninterrupted_run(tmp_path, deterministic):
    # Dropout and random crops/flips make RNG and data order part of what must be restored;
    # momentum makes the optimiser state part of it; 6 steps/epoch, checkpoints every 4 steps.
    cfg = fast_cfg(epochs=3, lr=0.05, checkpoint_every=4, keep_last=2, warmup_epochs=0.5, milestones=[2])
    train, val = ToyClips(24), ToyClips(6, train=False, seed=1)

    ref = toy_distiller(dropout=0.3)
    expected = Trainer(ref, cfg, checkpoint_dir=tmp_path / "ref", progress=False).fit(train, val)

    crashed = toy_distiller(dropout=0.3)
    with pytest.raises(KeyboardInterrupt):  # at step 10 = epoch 1, step 4 of 6; last checkpoint: step 8
        Trainer(crashed, cfg, callbacks=[RaiseAt(10)], checkpoint_dir=tmp_path / "run", progress=False).fit(train, val)
    assert CheckpointManager(tmp_path / "run").latest().name == "ckpt-000000008.pt"

    resumed = toy_distiller(dropout=0.3, seed=123)  # different init: the weights must come from the checkpoint
    got = Trainer(resumed, cfg, checkpoint_dir=tmp_path / "run", progress=False).fit(train, val)

    w_ref, w_got = weights(ref), weights(resumed)
    assert all(torch.equal(w_ref[k], w_got[k]) for k in w_ref)
    assert comparable(got.history) == comparable(expected.history)
    assert len(CheckpointManager(tmp_path / "run").list()) == 2  # keep_last


def test_resume_with_a_different_batch_size_is_refused(tmp_path):
    Trainer(toy_distiller(), fast_cfg(epochs=1), checkpoint_dir=tmp_path, progress=False).fit(ToyClips(8))
    with pytest.raises(ValueError, match="cannot resume"):
        Trainer(toy_distiller(), fast_cfg(epochs=2, batch_size=2), checkpoint_dir=tmp_path, progress=False).fit(ToyClips(8))


def test_a_finished_run_resumes_to_a_no_op_and_resume_false_starts_over(tmp_path):
    d = toy_distiller()
    first = Trainer(d, fast_cfg(epochs=2), checkpoint_dir=tmp_path, progress=False).fit(ToyClips(8))
    again = Trainer(toy_distiller(seed=5), fast_cfg(epochs=2), checkpoint_dir=tmp_path, progress=False).fit(ToyClips(8))
    assert comparable(again.history) == comparable(first.history)
    fresh = Trainer(toy_distiller(seed=5), fast_cfg(epochs=2), checkpoint_dir=tmp_path, progress=False).fit(ToyClips(8), resume=False)
    assert comparable(fresh.history) != comparable(first.history)


def _launch(out: Path, spec: dict, tmp: Path) -> subprocess.CompletedProcess:
    cfg = tmp / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.getcwd()])}
    cmd = [sys.executable, "-m", "dtkd.launch", "--factory", "engine_helpers:make_job",
           "--config", str(cfg), "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    train = dict(epochs=3, batch_size=4, lr=0.05, log_every=1, checkpoint_every=4, amp="off", seed=7)
    spec = {"train": train, "n": 24, "dropout": 0.3, "teachers": True}

    ref = _launch(tmp_path / "ref", spec, tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = _launch(tmp_path / "run", {**spec, "kill_at_step": 11}, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "run" / "result.json").exists()
    assert CheckpointManager(tmp_path / "run" / "checkpoints").latest().name == "ckpt-000000008.pt"

    resumed = _launch(tmp_path / "run", {**spec, "model_seed": 99}, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "ref" / "result.json").read_text())["history"]
    hb = json.loads((tmp_path / "run" / "result.json").read_text())["history"]
    assert comparable(ha) == comparable(hb)
