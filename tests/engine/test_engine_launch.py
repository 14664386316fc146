"""The launch entry point on a real dtkd config: fine-tune a teacher, then distil a student
from it with cached teachers, each as its own process (as torchrun would start them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dtkd.launch import parse_args, teacher_weights

REPO = Path(__file__).resolve().parents[2]


def _launch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dtkd.launch", "--no-progress", "--device", "cpu", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_arguments(tmp_path):
    args = parse_args(["--config", "c.yaml", "--out", "runs/x", "--teacher", "cnn=a.pt", "--teacher", "vit=b.pt"])
    assert args.stage == "distill" and args.teacher == ["cnn=a.pt", "vit=b.pt"] and not args.no_resume
    # the TrainJob / PyTorchJob (k8s/training/) pass both teachers after one flag.
    assert parse_args(["--config", "c", "--out", "o", "--teacher", "cnn=a.pt", "vit=b.pt"]).teacher == ["cnn=a.pt", "vit=b.pt"]
    with pytest.raises(SystemExit):
        parse_args(["--config", "c.yaml", "--out", "o", "--stage", "student"])
    (tmp_path / "a.pt").touch()
    assert teacher_weights([f"cnn={tmp_path / 'a.pt'}"]) == {"cnn": str(tmp_path / "a.pt")}
    with pytest.raises(ValueError, match="cnn=PATH or vit=PATH"):
        teacher_weights(["student=x.pt"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        teacher_weights(["vit=/nonexistent.pt"])


@pytest.mark.slow
def test_teacher_then_cached_distillation_from_a_real_config(tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg = raw["parameters"]["config"]
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["distill"]["teacher_cache_views"] = 2
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))

    teacher = _launch("--config", str(path), "--stage", "cnn_teacher", "--out", str(tmp_path / "cnn"))
    assert teacher.returncode == 0, teacher.stderr[-4000:]
    weights = tmp_path / "cnn" / "model.pt"
    assert weights.exists() and (tmp_path / "cnn" / "checkpoints").is_dir()

    student = _launch("--config", str(path), "--stage", "distill", "--out", str(tmp_path / "student"),
                      "--teacher", f"cnn={weights}")
    assert student.returncode == 0, student.stderr[-4000:]
    assert "no weights for the vit teacher" in student.stderr  # the missing one is named, not silent
    result = json.loads((tmp_path / "student" / "result.json").read_text())
    final = result["final_metrics"]
    assert {"train_loss/sr", "train_loss/sd", "train_loss/rkd", "val_top1"} <= final.keys()
    meta = json.loads((tmp_path / "student" / "checkpoints" / "teacher_cache" / "meta.json").read_text())
    assert meta["num_views"] == 2 and set(meta["teachers"]) == {"cnn", "vit"}
    state = torch.load(tmp_path / "student" / "model.pt", weights_only=True)
    assert not any(k.startswith(("sdd.", "sdb.", "teachers.")) for k in state)  # the plain student only


@pytest.mark.slow
def test_throughput_benchmark_prints_the_four_ratios_last():
    # Smallest clips the real paper-scale models accept, one timed step: checks the plumbing,
    # not the numbers (docs/benchmarks.md has those).
    proc = subprocess.run([sys.executable, "bench/throughput.py", "--frames", "4", "--student-crop", "32",
                           "--teacher-crop", "32", "--steps", "1", "--rounds", "1", "--threads", "1"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ce"] == 1.0
    assert all(report[k] > 0 for k in ("kd_online", "dtkd_online", "dtkd_cached"))
    assert report["timed_steps"] == {"ce": 1, "kd_online": 1, "dtkd_online": 1, "dtkd_cached": 1}
