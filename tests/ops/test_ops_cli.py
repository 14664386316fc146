"""The `dtkd` command line: exit codes and reports, against a real sqlite MLflow registry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops_helpers import REPO_ROOT, toy_evaluate, toy_model
from dtkd_ops.cli import EXIT_ERROR, EXIT_FAILED, EXIT_OK, main
from dtkd_ops.registry import ModelRegistry

GATE_CFG = REPO_ROOT / "configs" / "gate.yaml"


@pytest.fixture
def registry(tracking_uri):
    return ModelRegistry(tracking_uri)


def _register(reg, noise, seed=1, fingerprint="data-v1", name="student"):
    model = toy_model(noise, seed=seed)
    return reg.register_candidate(model, registered_name=name, metrics=toy_evaluate(model),
                                  dataset_fingerprint=fingerprint, pip_requirements=["torch"])


def _gate(cmd, registry, *extra):
    return main([cmd, "--tracking-uri", registry.tracking_uri, "--model", "student",
                 "--gate-config", str(GATE_CFG), *extra])


def test_gate_and_promote_exit_codes(registry, capsys, tmp_path):
    _register(registry, 1.0)
    assert _gate("promote", registry) == EXIT_OK
    assert "champion -> student v1" in capsys.readouterr().out
    assert registry.get_champion("student").version == 1

    _register(registry, 3.0, seed=2)  # worse: v2 is the challenger
    assert _gate("gate", registry) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "Promotion gate: FAIL -> champion unchanged" in out and "vs champion" in out
    assert _gate("promote", registry, "--candidate", "2") == EXIT_FAILED
    assert "champion unchanged" in capsys.readouterr().out
    assert registry.get_champion("student").version == 1

    _register(registry, 0.05, seed=3)  # better: v3
    decision_file = tmp_path / "decision.json"
    assert _gate("gate", registry, "--json", str(decision_file)) == EXIT_OK
    assert registry.get_champion("student").version == 1, "`dtkd gate` must never move champion"
    decision = json.loads(decision_file.read_text())
    assert decision["promote"] is True and decision["promoted"] is False
    assert "[dry run]" in decision["report"]
    assert _gate("promote", registry) == EXIT_OK
    assert registry.get_champion("student").version == 3

    assert _gate("promote", registry) == EXIT_OK  # v3 already is the champion: a no-op, not a failure
    assert "already the champion" in capsys.readouterr().out

    assert main(["rollback", "--tracking-uri", registry.tracking_uri, "--model", "student"]) == EXIT_OK
    assert registry.get_champion("student").version == 1


def test_recorded_metrics_from_different_data_are_refused(registry, capsys):
    _register(registry, 1.0, fingerprint="data-v1")
    assert _gate("promote", registry) == EXIT_OK
    _register(registry, 0.01, fingerprint="data-v2")  # better, but measured on other data
    assert _gate("promote", registry) == EXIT_FAILED
    assert "different datasets" in capsys.readouterr().out
    assert registry.get_champion("student").version == 1
    # re-evaluating both on one split (the toy evaluator) settles it
    assert _gate("promote", registry, "--evaluator", "ops_helpers:toy_evaluator_factory") == EXIT_OK
    assert registry.get_champion("student").version == 2


def test_errors_exit_2_and_name_the_problem(registry, capsys, tmp_path):
    assert _gate("gate", registry) == EXIT_ERROR  # no such model yet
    assert "registered model 'student': alias 'challenger' not found" in capsys.readouterr().err

    _register(registry, 1.0)
    bad = tmp_path / "gate.yaml"
    bad.write_text("metric: top1\nmax_paramz: 10\n")
    assert main(["gate", "--tracking-uri", registry.tracking_uri, "--model", "student",
                 "--gate-config", str(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(bad) in err and "max_paramz" in err

    assert main(["gate", "--tracking-uri", str(tmp_path / "mlruns"), "--model", "student",
                 "--gate-config", str(GATE_CFG)]) == EXIT_ERROR
    assert "sqlite:///" in capsys.readouterr().err
    assert _gate("gate", registry, "--evaluator", "no_colon") == EXIT_ERROR
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


@pytest.mark.slow
def test_real_process_exit_code(registry):
    """`python -m dtkd_ops.cli` as CI runs it (the `dtkd` console script calls the same main)."""
    registry.set_champion("student", _register(registry, 1.0).version)
    _register(registry, 3.0, seed=2)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dtkd_ops.cli", "promote", "--tracking-uri", registry.tracking_uri,
                           "--model", "student", "--gate-config", str(GATE_CFG)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == EXIT_FAILED, proc.stdout + proc.stderr
    assert "champion unchanged" in proc.stdout
    assert registry.get_champion("student").version == 1


@pytest.mark.slow
def test_gate_reevaluates_both_models_on_a_manifest(registry, tmp_path, capsys):
    """`dtkd gate --manifest`: dtkd's own loader + evaluate() on real synthetic videos."""
    import torch

    from dtkd.data import build_manifest, generate_synthetic
    from dtkd.models import build, get_spec
    from dtkd_ops._io import write_manifest

    root = generate_synthetic(tmp_path / "synthetic", num_classes=2, clips_per_class={"train": 1, "test": 2},
                              frames=16, size=64, fps=8)
    manifest = build_manifest("synthetic", root)
    path = write_manifest(manifest, tmp_path / "manifest.parquet", base=tmp_path)
    spec = get_spec("x3d_tiny")
    view = {"frames": spec.frames, "sampling_rate": spec.sampling_rate, "crop_size": spec.crop_size,
            "mean": list(spec.mean), "std": list(spec.std)}
    for seed in (0, 1):
        torch.manual_seed(seed)
        registry.register_candidate(build("x3d_tiny", num_classes=2), registered_name="student",
                                    metrics={"top1": 0.0}, dataset_fingerprint="x", input_spec=view)
    registry.set_champion("student", 1)
    out = tmp_path / "decision.json"
    code = main(["gate", "--tracking-uri", registry.tracking_uri, "--model", "student", "--candidate", "2",
                 "--gate-config", str(GATE_CFG), "--manifest", str(path), "--json", str(out)])
    decision = json.loads(out.read_text())
    assert code == (EXIT_OK if decision["promote"] else EXIT_FAILED)
    for side in ("candidate_metrics", "champion_metrics"):
        m = decision[side]
        assert m["n"] == 4 and 0.0 <= m["top1"] <= 1.0 and m["params"] > 0 and m["latency_ms"] > 0
    assert decision["candidate_metrics"]["dataset_fingerprint"] == decision["champion_metrics"]["dataset_fingerprint"]
    assert registry.get_champion("student").version == 1


@pytest.mark.slow
def test_concurrent_promotes_have_exactly_one_winner(registry):
    """Three `promote` processes at once, each with a candidate better than the champion: the
    check of the champion and the move of the alias are one locked step, so exactly one wins and
    the others exit non-zero, whatever the interleaving (issue "MLOps a platform team can trust").
    The three candidates are the same model: a promote that starts after the winner moved the
    alias compares against an equal champion and fails on the margin instead of racing."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for round_ in range(2):
        registry.set_champion("student", _register(registry, 3.0, seed=50 + round_).version)
        before = registry.get_champion("student").version
        candidates = [_register(registry, 0.05, seed=2).version for _ in range(3)]
        procs = [subprocess.Popen([sys.executable, "-m", "dtkd_ops.cli", "promote", "--tracking-uri",
                                   registry.tracking_uri, "--model", "student", "--candidate", str(v),
                                   "--gate-config", str(GATE_CFG)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=env) for v in candidates]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        winners = [v for v, p in zip(candidates, procs) if p.returncode == EXIT_OK]
        assert len(winners) == 1, outs
        champion = registry.get_champion("student").version
        assert champion == winners[0] != before
        for v, p, out in zip(candidates, procs, outs):
            if v != champion:
                assert p.returncode == EXIT_FAILED and "champion unchanged" in out, out
                assert registry.get_version("student", v).tags["dtkd.gate.decision"] in ("stale", "fail"), out
