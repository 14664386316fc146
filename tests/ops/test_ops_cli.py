"""The `dtkd` command line: exit codes and reports, against a real sqlite MLflow registry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops_helpers import REPO_ROOT, toy_model
from dtkd_ops.cli import (EXIT_ERROR, EXIT_FAILED, EXIT_LOST_RACE, EXIT_NO_CHANGE, EXIT_OK, EXIT_PROMOTED,
                          EXIT_REFUSED, EXIT_WORSE, build_parser, main)
from dtkd_ops.registry import ModelRegistry

GATE_CFG = REPO_ROOT / "configs" / "gate.yaml"
TOY = ["--evaluator", "test_ops_gate_paired:toy_evaluator_factory"]


@pytest.fixture
def registry(tracking_uri):
    return ModelRegistry(tracking_uri)


def _register(reg, noise, seed=1, fingerprint="data-v1", name="student", **kw):
    model = toy_model(noise, seed=seed)
    return reg.register_candidate(model, registered_name=name, metrics={}, dataset_fingerprint=fingerprint,
                                  pip_requirements=["torch"], **kw)


def _gate(cmd, registry, *extra, evaluator=TOY):
    return main([cmd, "--tracking-uri", registry.tracking_uri, "--model", "student",
                 "--gate-config", str(GATE_CFG), *evaluator, *extra])


def test_exit_codes_are_distinct_and_documented_in_the_help():
    codes = [EXIT_PROMOTED, EXIT_NO_CHANGE, EXIT_WORSE, EXIT_REFUSED, EXIT_LOST_RACE, EXIT_ERROR]
    assert len(set(codes)) == len(codes) and EXIT_PROMOTED == EXIT_OK == 0
    text = build_parser()._subparsers._group_actions[0].choices["gate"].format_help()
    for code, word in zip(codes, ("promoted", "no significant change", "worse", "refused", "lost", "could not run")):
        assert f"  {code}  " in text and word in text, text


def test_gate_and_promote_exit_codes(registry, capsys, tmp_path):
    _register(registry, 1.0)
    assert _gate("promote", registry) == EXIT_PROMOTED
    assert "champion -> student v1" in capsys.readouterr().out
    assert registry.get_champion("student").version == 1

    _register(registry, 1.0)  # identical to the champion (a docs-only pull request): not a failure
    assert _gate("gate", registry) == EXIT_NO_CHANGE
    out = capsys.readouterr().out
    assert "NO CHANGE -> champion unchanged" in out and "gate decision: no_change (exit 3)" in out

    _register(registry, 3.0, seed=2)  # worse
    assert _gate("gate", registry) == EXIT_WORSE
    assert _gate("promote", registry, "--candidate", "3") == EXIT_WORSE
    assert "champion unchanged" in capsys.readouterr().out
    assert registry.get_champion("student").version == 1

    _register(registry, 0.05, seed=3)  # better: v4
    decision_file = tmp_path / "decision.json"
    assert _gate("gate", registry, "--json", str(decision_file)) == EXIT_PROMOTED
    assert registry.get_champion("student").version == 1, "`dtkd gate` must never move champion"
    decision = json.loads(decision_file.read_text())
    assert decision["outcome"] == "promoted" and decision["promoted"] is False and decision["tag"] == "would_promote"
    assert decision["test"]["b"] > decision["test"]["c"] and decision["test"]["p_value"] < 0.05
    assert "[dry run]" in decision["report"]
    assert _gate("promote", registry) == EXIT_PROMOTED
    assert registry.get_champion("student").version == 4

    assert _gate("promote", registry) == EXIT_NO_CHANGE  # v4 already is the champion
    assert "already is the champion" in capsys.readouterr().out

    assert main(["rollback", "--tracking-uri", registry.tracking_uri, "--model", "student"]) == EXIT_OK
    assert registry.get_champion("student").version == 1


def test_refused_when_the_clips_are_not_the_registered_test_split(registry, capsys):
    _register(registry, 1.0)
    assert _gate("promote", registry) == EXIT_PROMOTED
    _register(registry, 0.01, tags={"dtkd.gate.test_fingerprint": "manifest:other"})
    assert _gate("promote", registry) == EXIT_REFUSED
    assert "data mismatch" in capsys.readouterr().out
    assert registry.get_champion("student").version == 1


def test_errors_exit_2_and_name_the_problem(registry, capsys, tmp_path):
    assert _gate("gate", registry) == EXIT_ERROR  # no such model yet
    assert "registered model 'student': alias 'challenger' not found" in capsys.readouterr().err

    _register(registry, 1.0)
    assert _gate("gate", registry, evaluator=()) == EXIT_ERROR  # nothing to judge on
    err = capsys.readouterr().err
    assert "gate/test_manifest.parquet" in err and "--manifest" in err
    bad = tmp_path / "gate.yaml"
    bad.write_text("confidence: 0.95\nmax_paramz: 10\n")
    assert main(["gate", "--tracking-uri", registry.tracking_uri, "--model", "student",
                 "--gate-config", str(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(bad) in err and "max_paramz" in err

    assert main(["gate", "--tracking-uri", str(tmp_path / "mlruns"), "--model", "student",
                 "--gate-config", str(GATE_CFG)]) == EXIT_ERROR
    assert "sqlite:///" in capsys.readouterr().err
    assert _gate("gate", registry, evaluator=("--evaluator", "no_colon")) == EXIT_ERROR
    with pytest.raises(SystemExit) as exc:  # argparse: missing --model
        main(["gate"])
    assert exc.value.code == 2


def test_quality_command(dataset, tmp_path, capsys):
    from dtkd_ops._io import write_manifest
    from ops_helpers import CLASSES

    root, manifest = dataset
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"quality:\n  expected_labels: {CLASSES}\n  min_frames: 8\n  max_quarantine_fraction: 0.1\n")
    path = write_manifest(manifest, tmp_path / "manifest.parquet", base=tmp_path)  # relative paths
    args = ["quality", "--manifest", str(path), "--rules", str(rules), "--out", str(tmp_path / "q"),
            "--docs-dir", str(tmp_path / "docs")]
    os.chdir(tmp_path)
    assert main(args) == EXIT_OK
    assert capsys.readouterr().out.startswith("Data quality gate: PASSED")
    assert (tmp_path / "docs" / "index.html").is_file() and (tmp_path / "q" / "report.json").is_file()

    for p in manifest.path[:2]:
        Path(p).write_bytes(b"broken")
    assert main(args) == EXIT_FAILED
    assert "EXCEEDED" in capsys.readouterr().out
    assert main(["quality", "--manifest", str(tmp_path / "nope.parquet"), "--rules", str(rules)]) == EXIT_ERROR
    assert "manifest not found" in capsys.readouterr().err


def test_data_version_command(tmp_path, capsys):
    assert main(["data-version", "--repo", str(tmp_path)]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["dvc_hash"] is None


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)])}
    return [sys.executable, "-m", "dtkd_ops.cli", *args], env


@pytest.mark.slow
def test_real_process_exit_code(registry):
    """`python -m dtkd_ops.cli` as CI runs it (the `dtkd` console script calls the same main)."""
    registry.set_champion("student", _register(registry, 1.0).version)
    _register(registry, 3.0, seed=2)
    cmd, env = _cli("promote", "--tracking-uri", registry.tracking_uri, "--model", "student",
                    "--gate-config", str(GATE_CFG), *TOY)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == EXIT_WORSE, proc.stdout + proc.stderr
    assert "champion unchanged" in proc.stdout
    assert registry.get_champion("student").version == 1


def _synthetic_students(registry, tmp_path, seeds, *, log_test_manifest=False):
    """x3d_tiny students (random weights, 2 classes) on real synthetic videos; returns the manifest path."""
    import torch

    from dtkd.config import EvalConfig
    from dtkd.data import build_manifest, generate_synthetic
    from dtkd.models import build, get_spec
    from dtkd_ops._io import write_manifest
    from dtkd_ops.evaluation import gate_tags

    root = generate_synthetic(tmp_path / "synthetic", num_classes=2, clips_per_class={"train": 1, "test": 2},
                              frames=16, size=64, fps=8)
    manifest = build_manifest("synthetic", root)
    path = write_manifest(manifest, tmp_path / "manifest.parquet", base=tmp_path)
    test_only = tmp_path / "gate" / "test_manifest.parquet"
    test_only.parent.mkdir()
    manifest[manifest["split"] == "test"].to_parquet(test_only, index=False)
    spec = get_spec("x3d_tiny")
    view = {"frames": spec.frames, "sampling_rate": spec.sampling_rate, "crop_size": spec.crop_size,
            "mean": list(spec.mean), "std": list(spec.std)}
    for seed in seeds:
        torch.manual_seed(seed)
        extra = dict(tags=gate_tags(manifest, EvalConfig()), artifacts={"gate": test_only}) if log_test_manifest else {}
        registry.register_candidate(build("x3d_tiny", num_classes=2), registered_name="student",
                                    metrics={"top1": 0.0}, dataset_fingerprint="x", input_spec=view, **extra)
    return path


@pytest.mark.slow
def test_gate_reevaluates_both_models_on_a_manifest(registry, tmp_path):
    """`dtkd gate --manifest`: dtkd's test loader on real synthetic videos, both models measured."""
    path = _synthetic_students(registry, tmp_path, seeds=(0, 1))
    registry.set_champion("student", 1)
    out = tmp_path / "decision.json"
    code = main(["gate", "--tracking-uri", registry.tracking_uri, "--model", "student", "--candidate", "2",
                 "--gate-config", str(GATE_CFG), "--manifest", str(path), "--json", str(out)])
    decision = json.loads(out.read_text())
    assert code == decision["exit_code"] and decision["outcome"] in ("promoted", "no_change", "worse")
    for side in ("candidate_metrics", "champion_metrics"):
        m = decision[side]
        assert m["n"] == 4 and 0.0 <= m["top1"] <= 1.0 and m["params"] > 0 and m["latency_ms"] > 0
    assert decision["candidate_metrics"]["dataset_fingerprint"] == decision["champion_metrics"]["dataset_fingerprint"]
    assert registry.get_champion("student").version == 1


@pytest.mark.slow
def test_an_identical_video_model_is_no_change_on_its_logged_test_clips(registry, tmp_path):
    """Without --manifest the gate judges on the test manifest logged with the candidate (what the
    pipeline's register step logs), with the protocol recorded on it: same weights -> exit 3."""
    _synthetic_students(registry, tmp_path, seeds=(0, 0), log_test_manifest=True)
    registry.set_champion("student", 1)
    assert main(["gate", "--tracking-uri", registry.tracking_uri, "--model", "student",
                 "--gate-config", str(GATE_CFG)]) == EXIT_NO_CHANGE


@pytest.mark.slow
def test_concurrent_promotes_have_exactly_one_winner(registry):
    """Three `promote` processes at once, each with a candidate significantly better than the
    champion: the check of the champion and the move of the alias are one locked step, so exactly
    one wins and the others exit non-zero, whatever the interleaving (issue "MLOps a platform team
    can trust"). The three candidates are the same model: a promote that starts after the winner
    moved the alias compares against an equal champion (no change) instead of racing."""
    # one round here; 20 rounds are bench/promote_race.py's (docs/mlops.md)
    registry.set_champion("student", _register(registry, 3.0, seed=50).version)
    before = registry.get_champion("student").version
    candidates = [_register(registry, 0.05, seed=2).version for _ in range(3)]
    procs = []
    for v in candidates:
        cmd, env = _cli("promote", "--tracking-uri", registry.tracking_uri, "--model", "student", "--candidate",
                        str(v), "--gate-config", str(GATE_CFG), *TOY)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    winners = [v for v, p in zip(candidates, procs) if p.returncode == EXIT_PROMOTED]
    assert len(winners) == 1, outs
    champion = registry.get_champion("student").version
    assert champion == winners[0] != before
    for v, p, out in zip(candidates, procs, outs):
        if v != champion:
            assert p.returncode in (EXIT_LOST_RACE, EXIT_NO_CHANGE) and "champion unchanged" in out, out
            tag = registry.get_version("student", v).tags["dtkd.gate.decision"]
            assert tag == ("lost_race" if p.returncode == EXIT_LOST_RACE else "no_change"), out
