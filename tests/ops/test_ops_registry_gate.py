"""Promotion gate: the pure decision, and the MLflow registry end to end (real sqlite store)."""
from __future__ import annotations

import math

import pytest

from ops_helpers import REPO_ROOT, toy_evaluate, toy_model
from dtkd_ops.gate import GateConfig, evaluate_gate, load_gate_config, promote_if_better
from dtkd_ops.registry import (CHALLENGER, CHAMPION, TAG_PREVIOUS_CHAMPION, ModelRegistry, RegistryError,
                               check_tracking_uri)

BUDGET = GateConfig(min_top1_margin=0.01, max_params=1000, max_latency_ms=50.0)
GOOD = {"top1": 0.80, "params": 500, "latency_ms": 10.0}


# ----------------------------------------------------------------------------- evaluate_gate (pure)


def test_first_model_within_budget_is_promoted():
    d = evaluate_gate(GOOD, None, BUDGET)
    assert d.promote and "no champion yet" in " ".join(d.reasons)
    assert d.report.startswith("Promotion gate: PASS")


@pytest.mark.parametrize("key,value,needle", [("params", 5000, "params 5,000 > max 1,000"),
                                              ("latency_ms", 99.5, "latency_ms 99.5 ms > max 50 ms")])
def test_over_budget_is_refused_even_without_champion(key, value, needle):
    d = evaluate_gate({**GOOD, key: value}, None, BUDGET)
    assert not d.promote and any(needle in r for r in d.reasons), d.reasons


@pytest.mark.parametrize("cand,champ,promote", [
    (0.80, 0.70, True),     # clearly better
    (0.71, 0.70, True),     # exactly the margin
    (0.705, 0.70, False),   # better, but below the margin
    (0.70, 0.70, False),    # equal never promotes
    (0.60, 0.70, False),    # worse
])
def test_margin(cand, champ, promote):
    d = evaluate_gate({**GOOD, "top1": cand}, {**GOOD, "top1": champ}, BUDGET)
    assert d.promote is promote, d.report
    if not promote:
        assert any("vs champion" in r for r in d.reasons)


def test_zero_margin_still_requires_strictly_better():
    cfg = GateConfig(min_top1_margin=0.0)
    assert not evaluate_gate({"top1": 0.5}, {"top1": 0.5}, cfg).promote
    assert evaluate_gate({"top1": 0.5001}, {"top1": 0.5}, cfg).promote


@pytest.mark.parametrize("cand,needle", [
    ({"params": 10, "latency_ms": 1.0}, "candidate metric missing 'top1'"),
    ({**GOOD, "top1": math.nan}, "'top1' is not finite"),
    ({**GOOD, "top1": "high"}, "'top1' is not a number"),
    ({"top1": 0.9}, "budget: candidate missing 'params'"),
])
def test_fails_closed_on_bad_metrics(cand, needle):
    d = evaluate_gate(cand, {**GOOD, "top1": 0.1}, BUDGET)
    assert not d.promote and any(needle in r for r in d.reasons), d.reasons


def test_broken_champion_metrics_never_promote():
    d = evaluate_gate(GOOD, {"params": 1}, BUDGET)
    assert not d.promote and any("champion metric missing 'top1'" in r for r in d.reasons)


def test_metrics_from_different_datasets_are_not_compared():
    d = evaluate_gate({**GOOD, "dataset_fingerprint": "a"}, {**GOOD, "top1": 0.1, "dataset_fingerprint": "b"}, BUDGET)
    assert not d.promote and any("different datasets" in r for r in d.reasons)
    relaxed = BUDGET.model_copy(update={"require_same_dataset": False})
    assert evaluate_gate({**GOOD, "dataset_fingerprint": "a"}, {**GOOD, "top1": 0.1, "dataset_fingerprint": "b"},
                         relaxed).promote


def test_report_is_a_readable_table():
    d = evaluate_gate({**GOOD, "top1": 0.6}, GOOD, BUDGET)
    lines = d.report.splitlines()
    assert lines[0] == "Promotion gate: FAIL -> champion unchanged"
    assert any(line.split()[:3] == ["top1", "0.6000", "0.8000"] for line in lines), d.report
    assert any(line.strip().startswith("FAIL  top1: 0.6000 vs champion 0.8000") for line in lines)


# ----------------------------------------------------------------------------- gate config


def test_repo_gate_config_loads():
    cfg = load_gate_config(REPO_ROOT / "configs" / "gate.yaml")
    # input_shape null: latency is measured on one clip of the model's own view.
    assert cfg.metric == "top1" and cfg.min_top1_margin > 0 and cfg.latency.input_shape is None


def test_gate_config_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "gate.yaml"
    bad.write_text("metric: top1\nmin_top1_marginn: 0.1\nlatency:\n  input_shape: [1, 3]\n")
    with pytest.raises(ValueError) as exc:
        load_gate_config(bad)
    msg = str(exc.value)
    assert str(bad) in msg and "min_top1_marginn" in msg and "latency.input_shape" in msg
    bad.write_text("gate:\n  max_params: -3\n")
    with pytest.raises(ValueError, match=r"gate\.max_params"):
        load_gate_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_gate_config(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- registry + gate


@pytest.fixture
def registry(tracking_uri):
    return ModelRegistry(tracking_uri)


def _register(reg, model, name="student", fingerprint="data-v1"):
    return reg.register_candidate(model, registered_name=name, metrics=toy_evaluate(model),
                                  params={"noise": "x"}, tags={"dtkd.role": "student"},
                                  dataset_fingerprint=fingerprint, pip_requirements=["torch"])


def test_file_store_is_refused():
    with pytest.raises(RegistryError, match="sqlite:///"):
        check_tracking_uri("/tmp/mlruns")
    with pytest.raises(RegistryError, match="file store"):
        check_tracking_uri("file:///tmp/mlruns")


def test_register_candidate_sets_challenger_and_round_trips(registry, tmp_path):
    import torch

    model = toy_model(0.5)
    extra = tmp_path / "confusion.txt"
    extra.write_text("1 0\n0 1\n")
    ref = registry.register_candidate(model, registered_name="student", metrics={**toy_evaluate(model), "note": "x"},
                                      params={"lr": 0.1}, tags={"dtkd.role": "student"},
                                      dataset_fingerprint="data-v1", artifacts={"eval": extra},
                                      input_spec={"frames": 4, "sampling_rate": 1, "crop_size": 8,
                                                  "mean": [0.5] * 3, "std": [0.5] * 3})
    assert ref.version == 1 and ref.aliases == (CHALLENGER,)
    assert ref.model_uri.startswith("models:/m-"), "must register the logged model URI, not runs:/"
    assert ref.dataset_fingerprint == "data-v1" and ref.tags["dtkd.role"] == "student"
    assert registry.get_champion("student") is None
    loaded = registry.load_model("student", CHALLENGER)
    assert type(loaded) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert registry.run_metrics(ref)["top1"] == pytest.approx(toy_evaluate(model)["top1"])
    arts = {a.path for a in registry.client.list_artifacts(ref.run_id, "eval")}
    assert arts == {"eval/confusion.txt"}
    # artifacts live next to the sqlite file, not in ./mlruns
    assert (tmp_path / "mlflow" / "artifacts").is_dir()
    with pytest.raises(RegistryError, match="never sets 'champion'"):
        registry.register_candidate(model, registered_name="student", metrics={}, dataset_fingerprint="d",
                                    alias=CHAMPION)
    with pytest.raises(RegistryError, match="alias 'nope' not found"):
        registry.get_version("student", "nope")


def test_gate_promotes_better_refuses_worse_and_rolls_back(registry):
    v1 = _register(registry, toy_model(1.0))
    d1 = promote_if_better("student", CHALLENGER, toy_evaluate, BUDGET, registry=registry)
    assert d1.promote and d1.promoted and registry.get_champion("student").version == v1.version

    worse = _register(registry, toy_model(3.0, seed=2))
    assert toy_evaluate(registry.load_model("student", worse.version))["top1"] < toy_evaluate(
        registry.load_model("student", v1.version))["top1"]
    d2 = promote_if_better("student", CHALLENGER, toy_evaluate, BUDGET, registry=registry)
    assert not d2.promote and not d2.promoted
    assert registry.get_champion("student").version == v1.version, "a worse candidate moved champion"
    assert registry.get_version("student", worse.version).tags["dtkd.gate.decision"] == "fail"
    assert "FAIL -> champion unchanged" in registry.get_version("student", worse.version).tags["dtkd.gate.report"]

    better = _register(registry, toy_model(0.05, seed=3))
    d3 = promote_if_better("student", better.version, toy_evaluate, BUDGET, registry=registry)
    assert d3.promote and d3.promoted, d3.report
    champ = registry.get_champion("student")
    assert champ.version == better.version and champ.tags[TAG_PREVIOUS_CHAMPION] == str(v1.version)
    assert d3.champion == f"student v{v1.version} @champion"

    again = promote_if_better("student", better.version, toy_evaluate, BUDGET, registry=registry)
    assert not again.promote and "already the champion" in again.reasons[0]

    assert registry.rollback_champion("student").version == v1.version
    assert registry.get_champion("student").version == v1.version

    gate_runs = registry.client.search_runs([registry.ensure_experiment()], "tags.`dtkd.gate.decision` = 'fail'")
    assert len(gate_runs) == 1 and gate_runs[0].data.metrics["promote"] == 0.0


def test_over_budget_better_model_is_refused(registry):
    _register(registry, toy_model(1.0))
    promote_if_better("student", CHALLENGER, toy_evaluate, BUDGET, registry=registry)
    big = _register(registry, toy_model(0.0, hidden=20))  # best top-1 but 20 x 64 extra params
    d = promote_if_better("student", CHALLENGER, toy_evaluate, BUDGET, registry=registry)
    assert not d.promote and any("params" in r and "> max" in r for r in d.reasons), d.reasons
    assert registry.get_champion("student").version == 1
    assert big.version == 2


def test_exception_midway_never_moves_champion(registry, monkeypatch):
    _register(registry, toy_model(1.0))
    promote_if_better("student", CHALLENGER, toy_evaluate, BUDGET, registry=registry)
    cand = _register(registry, toy_model(0.01, seed=5))

    calls = []

    def flaky(model):  # evaluates the candidate, then dies on the champion
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: device lost")
        return toy_evaluate(model)

    with pytest.raises(RuntimeError, match="device lost"):
        promote_if_better("student", CHALLENGER, flaky, BUDGET, registry=registry)
    assert registry.get_champion("student").version == 1
    assert registry.get_version("student", cand.version).tags["dtkd.gate.decision"] == "error"

    # the alias write itself fails: still the old champion, and the error surfaces
    real = registry.client.set_registered_model_alias

    def broken(name, alias, version):
        if alias == CHAMPION:
            raise ConnectionError("registry went away")
        return real(name, alias, version)

    monkeypatch.setattr(registry.client, "set_registered_model_alias", broken)
    with pytest.raises(ConnectionError):
        promote_if_better("student", CHALLENGER, toy_evaluate, BUDGET, registry=registry)
    monkeypatch.undo()
    assert registry.get_champion("student").version == 1


def test_evaluate_fn_may_take_the_version_ref(registry):
    _register(registry, toy_model(1.0))
    seen = []

    def with_ref(model, ref):
        seen.append(ref.version)
        return toy_evaluate(model)

    promote_if_better("student", 1, with_ref, BUDGET, registry=registry)
    assert seen == [1]


def test_function_api_uses_the_given_store(tracking_uri):
    from dtkd_ops import registry as reg_mod

    uri = tracking_uri
    ref = reg_mod.register_candidate(toy_model(1.0), registered_name="t", metrics={"top1": 0.5},
                                     dataset_fingerprint="d", tracking_uri=uri, pip_requirements=["torch"])
    assert reg_mod.get_champion("t", tracking_uri=uri) is None
    reg_mod.set_alias("t", CHAMPION, ref.version, tracking_uri=uri)
    assert reg_mod.get_champion("t", tracking_uri=uri).version == ref.version
    assert reg_mod.load_model("t", CHAMPION, tracking_uri=uri) is not None


def test_inside_an_active_run_like_a_zenml_step(tracking_uri):
    """ZenML's MLflow experiment tracker opens a run before the step body: registration and the
    gate then log into nested child runs of the same store."""
    import mlflow

    from dtkd_ops import registry as reg_mod

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    exp = mlflow.set_experiment("zenml-pipeline")
    with mlflow.start_run() as parent:
        model = toy_model(1.0)
        ref = reg_mod.register_candidate(model, registered_name="student", metrics=toy_evaluate(model),
                                         dataset_fingerprint="d", pip_requirements=["torch"])
        decision = promote_if_better("student", ref.version, toy_evaluate, BUDGET)
        assert mlflow.active_run().info.run_id == parent.info.run_id
    assert decision.promoted
    children = mlflow.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    assert len(children) == 2  # register + gate
    assert mlflow.get_tracking_uri() == tracking_uri


def test_dtkd_ops_never_imports_zenml():
    import ast

    for path in (REPO_ROOT / "dtkd_ops").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "zenml" for n in names), f"{path} imports zenml"


def test_a_concurrent_promotion_is_not_overwritten(registry):
    """The champion changes while the gate evaluates (another pipeline promoted meanwhile): the
    decision was made against a stale champion, so it must not be applied."""
    _register(registry, toy_model(1.0))
    promote_if_better("student", CHALLENGER, toy_evaluate, BUDGET, registry=registry)
    rival = _register(registry, toy_model(0.5, seed=7))
    mine = _register(registry, toy_model(0.01, seed=8))
    calls = []

    def racing(model):
        calls.append(1)
        if len(calls) == 2:  # after evaluating both, someone else promotes the rival
            registry.set_champion("student", rival.version)
        return toy_evaluate(model)

    d = promote_if_better("student", mine.version, racing, BUDGET, registry=registry)
    assert not d.promote and not d.promoted and "while the gate ran" in d.reasons[0]
    assert registry.get_champion("student").version == rival.version
    assert registry.get_version("student", mine.version).tags["dtkd.gate.decision"] == "stale"
