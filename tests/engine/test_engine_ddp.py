"""DDP with 2 gloo processes under torchrun matches one process at the same global batch.

Why they should agree: the sampler gives rank r the r-th half of every global batch, every
loss term is a mean over the samples of a batch, and DDP averages the two halves' gradients,
which is the gradient of the full batch. The model is BN-free (train-mode batch norm would
normalise over each rank's half) and has no dropout (masks are drawn per rank).

Why not bit-exact: the gradient mean is summed in a different order (two half-batch means
averaged by all-reduce vs one mean over the whole batch), so fp32 rounding differs at about
1e-7 relative per step; over 18 SGD steps that stays far below the 1e-5 absolute / 1e-4
relative tolerance used here, while any real bug (a rank seeing the wrong clips, a metric
averaged per rank instead of summed) moves weights by ~1e-2 and metrics by whole samples.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from engine_helpers import toy_distiller

HERE = Path(__file__).parent


def _run(out: Path, nproc: int, spec: dict) -> dict:
    cfg = out.with_suffix(".yaml")
    cfg.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.getcwd()])}
    launch = ["-m", "dtkd.launch", "--factory", "engine_helpers:make_job", "--config", str(cfg),
              "--out", str(out), "--device", "cpu", "--no-progress"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *launch]
    else:
        cmd = [sys.executable, *launch]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    spec = {"train": dict(epochs=3, batch_size=8, lr=0.05, log_every=3, amp="off", seed=3, grad_clip=5.0),
            "n": 48, "n_val": 9, "teachers": True}
    one = _run(tmp_path / "one", 1, spec)
    two = _run(tmp_path / "two", 2, spec)
    assert (one["world_size"], two["world_size"]) == (1, 2)

    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    init = toy_distiller(teachers=True).student.state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1e-2  # training moved the weights far more than the tolerance
    drift = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |w_1proc - w_2proc| = {drift:.2e} (weights moved up to {moved:.2e})")

    for h1, h2 in zip(one["history"], two["history"], strict=True):
        # 9 validation clips split 5 + 4 over the ranks: counted once each, no padding.
        assert h2["val_n"] == h1["val_n"] == 9
        for key in ("train_loss", "train_loss/ce", "train_loss/kd", "train_loss/feat", "val_loss", "lr"):
            assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-6), key
        assert h2["train_top1"] == h1["train_top1"] and h2["val_top1"] == h1["val_top1"]


@pytest.mark.slow
def test_a_nan_on_one_rank_makes_every_rank_skip_the_step(tmp_path):
    # Clip 5 is NaN. Whichever rank draws it, both must skip that step (one all-reduce decides),
    # or the other rank would wait forever in DDP's gradient all-reduce.
    from dtkd.engine.sampling import EpochSampler

    spec = {"train": dict(epochs=2, batch_size=8, lr=0.05, log_every=4, amp="off", seed=3, max_nonfinite=2),
            "n": 32, "teachers": False, "nan_indices": [5]}
    two = _run(tmp_path / "two", 2, spec)
    s = EpochSampler(32, 8, seed=3)
    per_epoch = []
    for e in range(2):
        s.set_epoch(e)
        idx = [k.index for k in s]
        per_epoch.append(sum(5 in idx[j * 8 : (j + 1) * 8] for j in range(4)))
    assert two["nonfinite_skipped"] == sum(per_epoch) == 2
    assert [h["nonfinite_skipped"] for h in two["history"]] == per_epoch
    assert all(h["train_loss"] == h["train_loss"] for h in two["history"])  # finite means, no NaN leaked in
