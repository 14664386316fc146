"""Promotion gate on evidence: the exact McNemar test, the four outcomes, latency measured side by
side, and the gate end to end on a real sqlite MLflow registry with real (tiny) torch models.

The toy "clips" are the 256 points of ``ops_helpers.toy_data`` (ids clip-000...), scored by
:class:`ToyEvaluator` exactly as the gate scores videos: per-clip top-1 correctness keyed by id."""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from ops_helpers import N_FEATURES, REPO_ROOT, toy_data, toy_model
from dtkd_ops.evaluation import TAG_CLASSES, TAG_TEST_FINGERPRINT, ClipScores, DataMismatch, latency_ms
from dtkd_ops.gate import (EXIT_CODES, LOST_RACE, NO_CHANGE, PROMOTED, REFUSED, WORSE, GateConfig, Measurement,
                           evaluate_gate, mcnemar_p, promote_if_better)
from dtkd_ops.registry import CHALLENGER, ModelRegistry

CFG = GateConfig(confidence=0.95, min_top1_margin=0.02, max_params=1000, max_latency_ms=50.0)
FAST = GateConfig(**{**CFG.model_dump(), "latency": {"warmup": 1, "repeats": 3, "threads": 1}})


# ----------------------------------------------------------------------------- toy models and evaluator


class ToyEvaluator:
    """Per-clip correctness on toy_data; ``order`` reverses the clip order for some versions (a
    broken evaluator the gate must catch)."""

    def __init__(self, fingerprint: str = "toy:v1", reversed_for: tuple[int, ...] = ()):
        self.fingerprint, self.reversed_for = fingerprint, reversed_for

    def scores(self, model, ref) -> ClipScores:
        x, y, _ = toy_data()
        with torch.no_grad():
            logits = model(x)
        if logits.shape[1] != int(y.max()) + 1:
            raise DataMismatch(f"{ref} predicts {logits.shape[1]} classes, the clips have {int(y.max()) + 1}")
        correct = (logits.argmax(dim=1) == y).tolist()
        ids = [f"clip-{i:03d}" for i in range(len(y))]
        if ref.version in self.reversed_for:
            ids, correct = ids[::-1], correct[::-1]
        return ClipScores(tuple(ids), tuple(correct), self.fingerprint)

    def latency_input(self, ref):
        return (1, N_FEATURES)


def toy_evaluator_factory(manifest, gate_cfg, registry):
    """``dtkd gate --evaluator test_ops_gate_paired:toy_evaluator_factory``."""
    return ToyEvaluator()


class Sleepy(nn.Module):
    """A real model that takes ``ms`` per forward: over any latency budget below that."""

    def __init__(self, ms: float):
        super().__init__()
        self.ms, self.head = ms, toy_model(0.05, seed=3)

    def forward(self, x):
        time.sleep(self.ms / 1000.0)
        return self.head(x)


class ThreadProbe(nn.Module):
    """Records torch's thread count at every forward."""

    def __init__(self):
        super().__init__()
        self.seen, self.lin = [], nn.Linear(N_FEATURES, 3)

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return self.lin(x)


def scores(bits: str, ids=None, fp: str = "fp") -> ClipScores:
    ids = ids or [f"v{i}" for i in range(len(bits))]
    return ClipScores(tuple(ids), tuple(b == "1" for b in bits), fp)


def measured(bits: str, *, params=100, latency=1.0, ids=None, fp="fp", label="m") -> Measurement:
    return Measurement(label, scores(bits, ids, fp), params, latency)


# ----------------------------------------------------------------------------- McNemar, by hand


@pytest.mark.parametrize("b,c,p", [
    (0, 0, 1.0),                 # no discordant clip (identical models)
    (1, 1, 1.0),                 # 2 * P(X <= 1 | n=2) = 2 * 3/4, capped at 1
    (3, 0, 0.25),                # 2 * (1/2)^3
    (5, 0, 0.0625),              # 2 * (1/2)^5: five clips one way is not yet significant at 0.95
    (6, 0, 0.03125),             # 2 * (1/2)^6
    (0, 6, 0.03125),             # symmetric
    (8, 2, 112 / 1024),          # 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10
    (9, 1, 22 / 1024),           # 2 * (1 + 10) / 2^10
])
def test_exact_mcnemar_matches_hand_computed_values(b, c, p):
    assert mcnemar_p(b, c) == pytest.approx(p, rel=1e-12)


# ----------------------------------------------------------------------------- the decision (pure)


def test_identical_candidate_is_no_change():
    bits = "1101001110" * 9 + "110100"  # 96 clips
    d = evaluate_gate(measured(bits), measured(bits), CFG)
    assert d.outcome == NO_CHANGE and d.exit_code == EXIT_CODES[NO_CHANGE] == 3
    assert d.test["b"] == d.test["c"] == 0 and d.test["p_value"] == 1.0
    assert "within noise" in d.reasons[0]


def test_one_clip_better_on_96_is_noise_not_a_promotion():
    """The issue's case: a 1-epoch retrain at 0.198 vs 0.188 (one clip of 96) replaced the champion."""
    champ = "1" * 18 + "0" * 78
    cand = "1" * 19 + "0" * 77
    d = evaluate_gate(measured(cand), measured(champ), CFG)
    assert d.outcome == NO_CHANGE and d.test["b"] == 1 and d.test["c"] == 0


def test_significantly_better_and_margin_met_is_promoted():
    champ, cand = "1" * 40 + "0" * 56, "1" * 46 + "0" * 50  # 6 clips won, none lost: p = 1/32
    d = evaluate_gate(measured(cand), measured(champ), CFG)
    assert d.outcome == PROMOTED and d.exit_code == 0, d.reasons
    assert d.test["p_value"] == pytest.approx(0.03125) and d.test["delta"] == pytest.approx(6 / 96)


def test_significant_but_below_the_minimum_effect_is_no_change():
    champ, cand = "1" * 400 + "0" * 600, "1" * 406 + "0" * 594  # p = 1/32, gain 0.006 < 0.02
    d = evaluate_gate(measured(cand), measured(champ), CFG)
    assert d.outcome == NO_CHANGE and "below the minimum effect" in d.reasons[0], d.reasons
    assert "minimum absolute change" in d.reasons[0]  # MLflow's MetricThreshold said so


def test_significantly_worse():
    d = evaluate_gate(measured("1" * 40 + "0" * 56), measured("1" * 50 + "0" * 46), CFG)
    assert d.outcome == WORSE and d.exit_code == 4 and d.test["c"] == 10 and d.test["b"] == 0


def test_mixed_discordance_within_noise():
    champ = "10" * 48
    cand = "01" * 48  # 48 won, 48 lost
    assert evaluate_gate(measured(cand), measured(champ), CFG).outcome == NO_CHANGE


@pytest.mark.parametrize("cand_kw,champ_kw,needle", [
    ({"ids": [f"v{i}" for i in range(95)] + ["other"]}, {}, "clip 95 is 'other' for the candidate, 'v95' for the champion"),
    ({"fp": "manifest:new"}, {"fp": "manifest:old"}, "candidate scored on manifest:new, champion on manifest:old"),
])
def test_clips_that_do_not_pair_are_refused(cand_kw, champ_kw, needle):
    bits = "1" * 96
    d = evaluate_gate(measured(bits, **cand_kw), measured("0" * 96, **champ_kw), CFG)
    assert d.outcome == REFUSED and d.exit_code == 5 and any(needle in r for r in d.reasons), d.reasons


def test_different_clip_counts_are_refused():
    d = evaluate_gate(measured("1" * 10), measured("0" * 12), CFG)
    assert d.outcome == REFUSED and "candidate scored 10 clips, champion 12" in d.reasons[0]


def test_clips_other_than_the_registered_test_split_are_refused():
    d = evaluate_gate(measured("1" * 96, fp="manifest:b"), None, CFG, expected_fingerprint="manifest:a")
    assert d.outcome == REFUSED and "registered with test split manifest:a" in d.reasons[0]


@pytest.mark.parametrize("kw,needle", [
    ({"params": 5000}, "over budget: Metric params value threshold check failed: candidate model params = 5000"),
    ({"latency": 99.5}, "over budget: Metric latency_ms value threshold check failed"),
    ({"latency": math.nan}, "candidate latency_ms is not a finite number (nan)"),
    ({"params": math.inf}, "candidate params is not a finite number (inf)"),
])
def test_over_budget_or_non_finite_is_refused_even_when_better(kw, needle):
    d = evaluate_gate(measured("1" * 96, **kw), measured("0" * 96), CFG)
    assert d.outcome == REFUSED and any(needle in r for r in d.reasons), d.reasons


def test_no_champion_promotes_within_budget_only():
    assert evaluate_gate(measured("0" * 8), None, CFG).outcome == PROMOTED
    assert evaluate_gate(measured("1" * 8, latency=51.0), None, CFG).outcome == REFUSED


def test_a_broken_champion_measurement_is_refused():
    d = evaluate_gate(measured("1" * 8), measured("0" * 8, latency=math.nan), CFG)
    assert d.outcome == REFUSED and "champion latency_ms is not a finite number" in d.reasons[0]


# ----------------------------------------------------------------------------- latency, side by side


def test_latency_is_timed_interleaved_at_fixed_threads_and_threads_are_restored():
    before = torch.get_num_threads()
    probe, slow = ThreadProbe(), Sleepy(30.0)
    fast_ms, slow_ms = latency_ms([probe, slow], [(1, N_FEATURES)] * 2, warmup=2, repeats=5, threads=1)
    assert probe.seen == [1] * 7  # warm-up + repeats, every one at the fixed thread count
    assert torch.get_num_threads() == before
    assert slow_ms >= 30.0 > fast_ms


# ----------------------------------------------------------------------------- the gate on a real registry


@pytest.fixture
def registry(tracking_uri):
    return ModelRegistry(tracking_uri)


def _register(reg, model, name="student", **tags):
    return reg.register_candidate(model, registered_name=name, metrics={}, tags=tags or None,
                                  dataset_fingerprint="data-v1", pip_requirements=["torch"])


def _gate(reg, candidate=CHALLENGER, evaluator=None, cfg=FAST, **kw):
    return promote_if_better("student", candidate, evaluator or ToyEvaluator(), cfg, registry=reg, **kw)


def _decision_tag(reg, version):
    return reg.get_version("student", version).tags["dtkd.gate.decision"]


def test_gate_outcomes_on_a_real_registry(registry):
    v1 = _register(registry, toy_model(1.0))
    first = _gate(registry)
    assert first.outcome == PROMOTED and first.promoted and registry.get_champion("student").version == v1.version
    assert _decision_tag(registry, v1.version) == "promoted"

    same = _register(registry, toy_model(1.0))  # the same weights again: a docs-only change
    d = _gate(registry)
    assert d.outcome == NO_CHANGE and d.exit_code == 3 and d.test["b"] == d.test["c"] == 0, d.report
    assert _decision_tag(registry, same.version) == "no_change" and registry.get_champion("student").version == 1

    worse = _register(registry, toy_model(3.0, seed=2))
    d = _gate(registry)
    assert d.outcome == WORSE and d.exit_code == 4, d.report
    assert _decision_tag(registry, worse.version) == "worse" and registry.get_champion("student").version == 1

    better = _register(registry, toy_model(0.05, seed=3))
    dry = _gate(registry, dry_run=True)
    assert dry.outcome == PROMOTED and not dry.promoted and dry.exit_code == 0
    assert _decision_tag(registry, better.version) == "would_promote", "a dry run never claims a promotion"
    assert registry.get_champion("student").version == 1
    d = _gate(registry)
    assert d.outcome == PROMOTED and d.promoted, d.report
    assert registry.get_champion("student").version == better.version
    assert _decision_tag(registry, better.version) == "promoted"
    assert "PROMOTED -> champion moved" in registry.get_version("student", better.version).tags["dtkd.gate.report"]

    again = _gate(registry, better.version)
    assert again.outcome == NO_CHANGE and "already is the champion" in again.reasons[0]

    runs = registry.client.search_runs([registry.ensure_experiment()], "tags.`dtkd.gate.decision` = 'worse'")
    assert len(runs) == 1 and runs[0].data.metrics["test.c"] > runs[0].data.metrics["test.b"]
    table = registry.client.download_artifacts(runs[0].info.run_id, "gate_clips.csv")
    assert open(table).readline().strip() == "video_id,candidate,champion"


def test_no_tag_claims_a_pass_on_a_version_that_was_not_promoted(registry):
    _register(registry, toy_model(1.0))
    _gate(registry)
    for noise, seed in ((1.0, 1), (3.0, 2), (0.05, 3)):
        _register(registry, toy_model(noise, seed=seed))
        _gate(registry, dry_run=True)
    champion = registry.get_champion("student").version
    for ref in registry.versions("student"):
        tag = ref.tags["dtkd.gate.decision"]
        assert "pass" not in tag
        assert (tag == "promoted") == (ref.version == champion), (ref.version, tag)


def test_a_candidate_measured_on_other_clips_than_it_was_registered_with_is_refused(registry):
    _register(registry, toy_model(1.0))
    _gate(registry)
    cand = _register(registry, toy_model(0.05, seed=3), **{TAG_TEST_FINGERPRINT: "manifest:the-pipeline-split"})
    d = _gate(registry)
    assert d.outcome == REFUSED and "registered with test split manifest:the-pipeline-split" in d.reasons[0]
    assert _decision_tag(registry, cand.version) == "refused" and registry.get_champion("student").version == 1


def test_mismatched_clip_order_and_class_count_are_refused(registry):
    _register(registry, toy_model(1.0))
    _gate(registry)
    cand = _register(registry, toy_model(0.05, seed=3))
    d = _gate(registry, evaluator=ToyEvaluator(reversed_for=(1,)))
    assert d.outcome == REFUSED and "clip 0 is 'clip-000' for the candidate, 'clip-255'" in d.reasons[0]
    four_classes = nn.Linear(N_FEATURES, 4)
    _register(registry, four_classes)
    d = _gate(registry)
    assert d.outcome == REFUSED and "predicts 4 classes, the clips have 3" in d.reasons[0]
    assert registry.get_champion("student").version == 1 and cand.version == 2


def test_a_candidate_for_other_labels_is_refused(registry):
    _register(registry, toy_model(1.0), **{TAG_CLASSES: '["brush_hair", "clap", "wave"]'})
    _gate(registry)
    _register(registry, toy_model(0.05, seed=3), **{TAG_CLASSES: '["jump", "run", "sit"]'})
    d = _gate(registry)
    assert d.outcome == REFUSED and "not the same labels" in d.reasons[0] and "'jump'" in d.reasons[0], d.reasons
    assert registry.get_champion("student").version == 1


def test_latency_budget_is_checked_on_both_models_measured_together(registry):
    _register(registry, toy_model(1.0))
    _gate(registry)
    _register(registry, Sleepy(60.0))  # clearly better top-1, but 60 ms a forward; budget 50 ms
    d = _gate(registry)
    assert d.outcome == REFUSED and any("latency_ms" in r and "threshold = 50" in r for r in d.reasons), d.reasons
    assert d.candidate_metrics["latency_ms"] >= 60.0 > d.champion_metrics["latency_ms"]
    assert registry.get_champion("student").version == 1


def test_a_promote_that_loses_a_race_says_so(registry):
    _register(registry, toy_model(1.0))
    _gate(registry)
    rival = _register(registry, toy_model(0.5, seed=7))
    mine = _register(registry, toy_model(0.05, seed=8))

    class Racing(ToyEvaluator):
        def latency_input(self, ref):  # after both were scored, another promote moves champion
            if ref.version == mine.version:
                registry.set_champion("student", rival.version)
            return super().latency_input(ref)

    d = _gate(registry, mine.version, evaluator=Racing())
    assert d.outcome == LOST_RACE and d.exit_code == 6 and not d.promoted
    assert "lost a concurrent promotion" in d.reasons[-1]
    assert registry.get_champion("student").version == rival.version
    assert _decision_tag(registry, mine.version) == "lost_race"


def test_an_error_midway_never_moves_champion_and_is_tagged(registry):
    _register(registry, toy_model(1.0))
    _gate(registry)
    cand = _register(registry, toy_model(0.05, seed=5))

    class Dying(ToyEvaluator):
        def scores(self, model, ref):
            if ref.version == 1:
                raise RuntimeError("CUDA error: device lost")
            return super().scores(model, ref)

    with pytest.raises(RuntimeError, match="device lost"):
        _gate(registry, evaluator=Dying())
    assert registry.get_champion("student").version == 1
    assert _decision_tag(registry, cand.version) == "error"


def test_one_code_path_moves_champion():
    """The pipeline step and the CLI both decide through promote_if_better; nothing else in the
    MLOps code moves champion (registry.set_alias, the by-hand route, delegates to set_champion)."""
    import ast

    callers = {}
    for folder in ("dtkd_ops", "steps", "pipelines"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
                    name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                    callers.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    assert {"steps/register.py", "dtkd_ops/cli.py"} <= callers["promote_if_better"]
    assert callers["set_champion"] <= {"dtkd_ops/gate.py", "dtkd_ops/registry.py"}, callers["set_champion"]
