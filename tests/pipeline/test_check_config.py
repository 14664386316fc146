"""`python -m pipelines.check_config`: a run config is refused before anything runs, each reason
naming the file and the key (issue 13, item 5)."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from pipelines.check_config import main, problems

REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_run_config_passes():
    for name in ("default", "tiny", "paper_hmdb51"):  # the others are overlays merged onto one of these
        assert problems(REPO / "configs" / f"{name}.yaml") == [], name


def test_a_misspelt_top_level_key_is_refused_with_the_nearest_key(tmp_path):
    bad = tmp_path / "run.yaml"
    data = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    data["enable_cahce"] = data.pop("enable_cache", True)
    bad.write_text(yaml.safe_dump(data))
    assert problems(bad) == [f"{bad}: enable_cahce: not a ZenML run-config key (ZenML would ignore it); "
                             "did you mean 'enable_cache'?"]
    assert main([str(bad)]) == 2


def test_a_bad_dtkd_key_and_a_missing_gate_config_are_named(tmp_path):
    bad = tmp_path / "run.yaml"
    data = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    data["parameters"]["config"].setdefault("registry", {})["gate_config"] = str(tmp_path / "nope.yaml")
    bad.write_text(yaml.safe_dump(data))
    found = problems(bad)
    assert len(found) == 1 and found[0].startswith(f"{bad}: parameters.config.registry.gate_config: ")
    assert "nope.yaml" in found[0]
    data["parameters"]["config"]["models"]["student"]["overrides"] = {"widht": 2}
    bad.write_text(yaml.safe_dump(data))
    (found,) = problems(bad)
    assert str(bad) in found and "parameters.config.models.student: Value error" in found and "widht" in found


def test_an_unreadable_file_is_named(tmp_path):
    assert problems(tmp_path / "missing.yaml")[0].startswith(str(tmp_path / "missing.yaml"))
    shutil.copy(REPO / "configs" / "tiny.yaml", tmp_path / "ok.yaml")
    assert main([str(tmp_path / "ok.yaml")]) == 0
