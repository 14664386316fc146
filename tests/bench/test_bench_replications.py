"""bench/replications.py: two runs of the study pooled, pairs never mixing runs."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import replications  # noqa: E402


def _study(values: dict[str, dict[int, tuple[float, float]]]) -> dict:
    """A results.json with {row: {seed: (test, val)}}."""
    cells, results_of = {}, {}
    for row, seeds in values.items():
        for seed, (test, val) in seeds.items():
            key = f"{row}-{seed}"
            cells[key] = {"seed": seed, "test_top1": test, "val_top1": val}
            results_of.setdefault(row, []).append(key)
    return {"cells": cells, "results_of": results_of}


A = _study({"none": {0: (0.5, 0.6), 1: (0.7, 0.6)}, "dtkd": {0: (0.6, 0.7), 1: (0.7, 0.8)}})
B = _study({"none": {0: (0.4, 0.5), 1: (0.6, 0.5)}, "dtkd": {0: (0.7, 0.5), 1: (0.6, 0.5)}, "kd": {0: (0.1, 0.1)}})


def test_pool_offsets_seeds_per_run_and_keeps_rows_every_run_has():
    pooled = replications.pool([A, B], "test_top1")
    assert set(pooled) == {"none", "dtkd"}  # kd is in one run only
    assert pooled["dtkd"] == {0: 0.6, 1: 0.7, 1000: 0.7, 1001: 0.6}


def test_report_pairs_within_runs_by_hand():
    rep = replications.report([A, B], "dtkd")
    vs = rep["vs"]["none"]["test_top1"]
    # pairs: run A (0.6-0.5, 0.7-0.7), run B (0.7-0.4, 0.6-0.6) -> 0.1, 0.0, 0.3, 0.0
    assert vs["diffs"] == pytest.approx([0.1, 0.0, 0.3, 0.0])
    assert vs["mean"] == pytest.approx(0.1)
    assert rep["rows"]["none"]["val_top1"]["mean"] == pytest.approx(0.55)


def test_cli_prints_a_json_last_line(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(A))
    b.write_text(json.dumps(B))
    assert replications.main([str(a), str(b)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["runs"] == 2


def test_a_row_missing_from_a_run_is_refused():
    with pytest.raises(SystemExit, match="not in every run"):
        replications.report([A, B], "kd")
