"""bench/distill_step.py: with cached teachers a distillation step renders the student's view alone."""
from __future__ import annotations

import json

import pytest
import yaml
from bench_loader import REPO, load_bench


@pytest.mark.filterwarnings("ignore:phi_CNN fitted")
def test_cached_distillation_steps_render_only_the_student_view(tmp_path, capsys):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["parameters"]["config"]["data"]["root"] = str(tmp_path / "synthetic")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    report = load_bench("distill_step").main(["--config", str(config), "--epochs", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    # tiny.yaml: batch 4, 2 cached views; 4 classes x 4 train clips = 4 steps of 4 clips.
    assert report["teacher_cache_views"] == 2 and report["train_steps"] == 4
    assert report["views_per_step"] == 4  # one view per clip: the student's
    assert report["frames_read_per_step"] == 4 * 4  # 4 frames per student clip
    # The set-up rendered every view: the cache (16 clips x 2 views + 1 probe) with 3 views each.
    assert report["setup"]["items"] >= 33 and report["setup"]["views"] >= 3 * 33
    assert report["torch_threads"] >= 1 and report["cpu"]
