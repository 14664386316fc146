"""bench/study/power.py: seeds a paired comparison needs (hand-computed values), read from a
results.json shaped as bench/reproduce.py writes it (its stats.compare output)."""
from __future__ import annotations

import json

import pytest
from bench_loader import load_bench

load_bench("reproduce")  # puts the repository on sys.path

from bench.study import power, stats  # noqa: E402


def test_half_width_and_seeds_by_hand():
    assert power.z_of(0.95) == pytest.approx(1.959964, abs=1e-6)
    # 1.959964 * 2.9 / sqrt(5) = 2.5419
    assert power.half_width(2.9, 5) == pytest.approx(2.5419, abs=1e-4)
    # (1.959964 * 2.9 / 2) ** 2 = 8.077 -> 9 seeds; (1.959964 * 1 / 2) ** 2 = 0.96 -> at least 2
    assert power.seeds_needed(2.9, 2.0) == 9
    assert power.seeds_needed(1.0, 2.0) == 2
    # exactly on the boundary: (1.959964 * 2.0 / 1.959964) ** 2 = 4
    assert power.seeds_needed(2.0, 1.959964) == 4
    with pytest.raises(ValueError, match="target half-width"):
        power.seeds_needed(1.0, 0.0)


def _results() -> dict:
    ce = {0: 0.70, 1: 0.72, 2: 0.71}
    a = {0: 0.73, 1: 0.72, 2: 0.75}  # diffs +3, 0, +4 points: mean 2.333, sd 2.0817
    b = {0: 0.70, 1: 0.74}  # seed 2 failed: diffs 0, +2 points over 2 seeds
    tables = {"1": [{"row": "none", "vs_ce": None, "vs_best": None},
                    {"row": "a", "vs_ce": stats.compare(a, ce), "vs_best": None},
                    {"row": "b", "vs_ce": stats.compare(b, ce), "vs_best": stats.compare(b, a)}],
              "6": [{"row": "a", "vs_ce": stats.compare(a, ce), "vs_best": None}]}  # a row in two tables
    return json.loads(json.dumps({"analysis": {"tables": tables}}))  # as read back from the file


def test_power_rows_by_hand():
    lines = power.power_rows(_results(), target=2.0)
    assert [ln["row"] for ln in lines] == ["a", "b"]  # CE has no comparison; "a" once
    a, b = lines
    assert a["n"] == 3 and a["mean"] == pytest.approx(7 / 3) and a["sd"] == pytest.approx(2.081666, abs=1e-5)
    assert a["half_width"] == pytest.approx(1.959964 * 2.081666 / 3 ** 0.5, abs=1e-4)
    assert a["seeds_for_target"] == 5  # (1.959964 * 2.081666 / 2) ** 2 = 4.16
    assert b["n"] == 2 and b["sd"] == pytest.approx(2 ** 0.5)
    assert power.power_rows(_results(), against="vs_best")[0]["row"] == "b"


def test_cli_prints_the_table_and_rejects_a_file_that_is_not_a_study(tmp_path, capsys):
    good = tmp_path / "results.json"
    good.write_text(json.dumps(_results()))
    assert power.main([str(good), "--half-width", "2"]) == 0
    out = capsys.readouterr().out
    assert "| a | 3 | +2.3 | 2.1 | [" in out and "| 2.4 | 5 |" in out
    # median of the sds 2.0817 and 1.4142 = 1.7479; (1.959964 * 1.7479 / 2) ** 2 = 2.93 -> 3 seeds
    assert out.rstrip().endswith("median sd of the paired differences: 1.7 points; seeds for ±2: 3")
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"rows": []}))
    assert power.main([str(bad)]) == 2
    assert "other.json: not a study results.json" in capsys.readouterr().err
