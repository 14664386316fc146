"""bench/calibrate.py: one CE run on a tiny synthetic set, its report, and data reuse."""
from __future__ import annotations

import json

from bench_loader import load_bench


def test_calibrate_reports_the_run_and_reuses_its_data(tmp_path, capsys):
    bench = load_bench("calibrate")
    args = ["--classes", "2", "--train", "3", "--test", "2", "--video-frames", "8", "--frames", "4",
            "--epochs", "2", "--batch-size", "2", "--data-root", str(tmp_path)]
    assert bench.main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["args"]["model"] == "x3d_tiny" and report["args"]["size"] == 32
    # 2 classes x 2 test clips: top-1 is a multiple of 1/4.
    assert report["test_top1"] * 4 == int(report["test_top1"] * 4) and 0 <= report["test_top1"] <= 1
    assert report["best_test_top1"] >= report["test_top1"]
    roots = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))  # the writers' locks stay
    assert roots == ["store-2-3-2-8-32-0-easy", "synthetic-2-3-2-8-32-0-easy"]
    stamp = (tmp_path / roots[1] / "dtkd_synthetic.json").stat().st_mtime_ns
    assert bench.main(args) == 0  # same knobs: the generated set is reused, not rewritten
    assert (tmp_path / roots[1] / "dtkd_synthetic.json").stat().st_mtime_ns == stamp
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["test_top1"] == report["test_top1"]  # seeded: the same run twice
