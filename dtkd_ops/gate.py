"""Promotion gate: a candidate replaces the ``champion`` only on evidence.

Both models are loaded from the registry and measured here, in one process, by one evaluator:
per-clip top-1 correctness on the same test clips (paired by video id) and latency timed
interleaved at fixed torch threads (:mod:`dtkd_ops.evaluation`). The pipeline's register step and
``dtkd gate``/``dtkd promote`` both call :func:`promote_if_better`, so they cannot disagree.

:func:`evaluate_gate` (pure) turns the two measurements into one of four outcomes:

* ``refused``: the candidate is over budget (``max_params``/``max_latency_ms``, checked with
  MLflow's ``validate_evaluation_results``), a figure is missing or not finite, or the two were
  not scored on the same clips (ids, order, split fingerprint, class count).
* ``worse``: the exact McNemar test (two-sided binomial on the discordant clips) says the
  candidate is significantly worse at ``confidence``.
* ``promoted``: significantly better at ``confidence`` **and** top-1 gain >= ``min_top1_margin``
  (MLflow ``MetricThreshold(min_absolute_change=...)``), or no champion yet and within budget.
* ``no_change``: everything else: within noise (an identical candidate has no discordant clip),
  or significant but below the minimum effect.

MLflow's validation does thresholds and margins, not paired tests: it compares two numbers, so a
one-clip difference on 96 clips would pass any margin below 1/96. The paired test is ours.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dtkd_ops._io import format_validation_error, load_yaml_mapping

if TYPE_CHECKING:
    from dtkd_ops.evaluation import ClipScores, Evaluator

PROMOTED, NO_CHANGE, WORSE, REFUSED, LOST_RACE = "promoted", "no_change", "worse", "refused", "lost_race"
# Exit status of `dtkd gate`/`promote`; a pull request fails only on WORSE, REFUSED (and errors, 2).
EXIT_CODES = {PROMOTED: 0, NO_CHANGE: 3, WORSE: 4, REFUSED: 5, LOST_RACE: 6}
TAG_DECISION, TAG_REPORT = "dtkd.gate.decision", "dtkd.gate.report"
_MARGIN_TOLERANCE = 1e-9  # top-1 values are k/n floats: a gain equal to the margin must meet it

log = logging.getLogger(__name__)


class LatencySpec(BaseModel):
    """How latency is timed, the same for both models: ``warmup`` untimed forwards, then the median
    of ``repeats`` interleaved forwards of a zero input, at ``threads`` torch threads."""

    model_config = ConfigDict(extra="forbid")

    input_shape: Optional[list[int]] = Field(None, min_length=2)  # e.g. B,C,T,H,W; None: one clip of the model's view
    warmup: int = Field(3, ge=0)
    repeats: int = Field(10, ge=1)
    threads: int = Field(1, ge=1)
    device: str = "cpu"


class GateConfig(BaseModel):
    """``configs/gate.yaml``; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    confidence: float = Field(0.95, gt=0.5, lt=1.0)  # McNemar two-sided: significant when p < 1 - confidence
    min_top1_margin: float = Field(0.0, ge=0.0, lt=1.0)  # minimum top-1 gain (absolute) of a significant win
    # which top-1 the paired test and the margin compare, for a multi-head model (e.g. EPIC-KITCHENS):
    # a head's name ("verb", "noun") or "action" (every head right); null = top-1 (multi-head: the action's)
    metric: Optional[str] = None
    max_params: Optional[int] = Field(None, gt=0)  # None = unlimited
    max_latency_ms: Optional[float] = Field(None, gt=0)  # None = unlimited
    latency: LatencySpec = LatencySpec()


def load_gate_config(path: Union[str, Path], **overrides: Any) -> GateConfig:
    """Load and validate a gate YAML (top level, or under ``gate:``); errors name file and key."""
    raw = load_yaml_mapping(path)
    prefix = ""
    if set(raw) == {"gate"}:
        raw, prefix = raw["gate"] or {}, "gate"
    try:
        return GateConfig.model_validate({**raw, **overrides})
    except ValidationError as err:
        raise ValueError(format_validation_error(err, source=str(path), prefix=prefix)) from None


@dataclass(frozen=True)
class Measurement:
    """One model as the gate measured it."""

    label: str  # "name vN"
    scores: "ClipScores"
    params: float
    latency_ms: float
    latency_input: tuple[int, ...] = ()

    def metrics(self) -> dict[str, Any]:
        return {"top1": self.scores.top1, "n": self.scores.n, "params": self.params, "latency_ms": self.latency_ms,
                **self.scores.extra, "dataset_fingerprint": self.scores.fingerprint}


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: under "equally good", each of the ``b + c`` discordant clips
    (only one model right) favours either model with probability 1/2. No discordant clip: 1."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedTest:
    n: int  # clips
    b: int  # only the candidate right
    c: int  # only the champion right
    p_value: float

    @property
    def delta(self) -> float:
        """Candidate top-1 minus champion top-1."""
        return (self.b - self.c) / self.n


def paired_test(cand: "ClipScores", champ: "ClipScores") -> PairedTest:
    b = sum(x and not y for x, y in zip(cand.correct, champ.correct))
    c = sum(y and not x for x, y in zip(cand.correct, champ.correct))
    return PairedTest(cand.n, b, c, mcnemar_p(b, c))


@dataclass
class GateDecision:
    outcome: str  # promoted | no_change | worse | refused | lost_race
    reasons: list[str]
    report: str = ""
    candidate: Optional[str] = None  # "name vN"
    champion: Optional[str] = None
    dry_run: bool = False
    promoted: bool = False  # champion actually moved
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: Optional[dict[str, Any]] = None
    test: Optional[dict[str, Any]] = None  # the paired test: n, b, c, p_value, delta

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    @property
    def tag(self) -> str:
        """``dtkd.gate.decision``: never "promoted" unless champion moved; a passing dry run is
        ``would_promote``."""
        return "would_promote" if self.outcome == PROMOTED and not self.promoted else self.outcome

    def to_dict(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code, "tag": self.tag}


# ----------------------------------------------------------------------------- the decision (pure)


def evaluate_gate(candidate: Measurement, champion: Optional[Measurement], cfg: GateConfig, *,
                  expected_fingerprint: Optional[str] = None) -> GateDecision:
    """The outcome for ``candidate`` against ``champion`` (None: there is none). Refusals are
    checked first and all listed; ``expected_fingerprint``: the test split the candidate was
    registered with, which these clips must be."""
    refusals = _refusals(candidate, champion, cfg, expected_fingerprint)
    decision = GateDecision(REFUSED, refusals, candidate=candidate.label,
                            champion=champion.label if champion else None,
                            candidate_metrics=candidate.metrics(),
                            champion_metrics=champion.metrics() if champion else None)
    if refusals:
        return decision
    if champion is None:
        decision.outcome = PROMOTED
        decision.reasons = ["no champion yet: the first candidate within budget is promoted"]
        return decision
    test = paired_test(candidate.scores, champion.scores)
    decision.test = {**asdict(test), "delta": test.delta, "confidence": cfg.confidence}
    decision.outcome, decision.reasons = _verdict(test, candidate.scores.top1, champion.scores.top1, cfg)
    return decision


def _verdict(test: PairedTest, cand_top1: float, champ_top1: float, cfg: GateConfig) -> tuple[str, list[str]]:
    alpha = 1.0 - cfg.confidence
    evidence = (f"exact McNemar on {test.n} clips: {test.b} right only by the candidate, {test.c} only by the "
                f"champion, p = {test.p_value:.4g} (significant below {alpha:.4g})")
    if test.p_value >= alpha:
        return NO_CHANGE, [f"within noise: {evidence}"]
    if test.c > test.b:
        return WORSE, [f"significantly worse: {evidence}"]
    short = _margin_failure(cand_top1, champ_top1, cfg.min_top1_margin)
    if short:
        return NO_CHANGE, [f"significantly better but below the minimum effect: {short}", evidence]
    return PROMOTED, [f"significantly better: {evidence}",
                      f"top1 {cand_top1:.4f} vs {champ_top1:.4f}: gain {test.delta:+.4f} >= {cfg.min_top1_margin:g}"]


def _refusals(cand: Measurement, champ: Optional[Measurement], cfg: GateConfig,
              expected_fingerprint: Optional[str]) -> list[str]:
    out = [f"{who} {key} is not a finite number ({value!r})"
           for who, m in (("candidate", cand), ("champion", champ)) if m is not None
           for key, value in (("params", m.params), ("latency_ms", m.latency_ms)) if not _finite(value)]
    if expected_fingerprint and cand.scores.fingerprint != expected_fingerprint:
        out.append(f"data mismatch: {cand.label} was registered with test split {expected_fingerprint}, "
                   f"these clips are {cand.scores.fingerprint}; judge it on the split it was tested on")
    if not out:
        out += _budget_failures(cand, cfg)
    if champ is not None:
        out += _pairing_failures(cand, champ)
    return out


def _pairing_failures(cand: Measurement, champ: Measurement) -> list[str]:
    """Paired only when both scored the same clips in the same order; names the first mismatch."""
    a, b = cand.scores, champ.scores
    if a.fingerprint != b.fingerprint:
        return [f"data mismatch: candidate scored on {a.fingerprint}, champion on {b.fingerprint}"]
    if a.video_ids == b.video_ids:
        return []
    if a.n != b.n:
        return [f"data mismatch: candidate scored {a.n} clips, champion {b.n}"]
    i = next(i for i, (x, y) in enumerate(zip(a.video_ids, b.video_ids)) if x != y)
    return [f"data mismatch: clip {i} is {a.video_ids[i]!r} for the candidate, {b.video_ids[i]!r} for the champion"]


def _budget_failures(cand: Measurement, cfg: GateConfig) -> list[str]:
    """The budget with MLflow's ``validate_evaluation_results`` (one message per broken limit)."""
    from mlflow.models import MetricThreshold

    limits = {"params": cfg.max_params, "latency_ms": cfg.max_latency_ms}
    thresholds = {k: MetricThreshold(threshold=v, greater_is_better=False) for k, v in limits.items() if v is not None}
    measured = {"params": cand.params, "latency_ms": cand.latency_ms}
    msg = _mlflow_validate(thresholds, measured, None)
    return [f"over budget: {line}" for line in msg.splitlines() if line.strip()] if msg else []


def _margin_failure(cand_top1: float, champ_top1: float, margin: float) -> Optional[str]:
    if margin <= 0:
        return None
    from mlflow.models import MetricThreshold

    threshold = MetricThreshold(min_absolute_change=max(margin - _MARGIN_TOLERANCE, 1e-12), greater_is_better=True)
    return _mlflow_validate({"top1": threshold}, {"top1": cand_top1}, {"top1": champ_top1})


def _mlflow_validate(thresholds: dict, candidate: dict, baseline: Optional[dict]) -> Optional[str]:
    """None when ``candidate`` meets ``thresholds``, else MLflow's failure message."""
    if not thresholds:
        return None
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    quiet = logging.getLogger("mlflow.models.evaluation.validation")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        mlflow.validate_evaluation_results(thresholds, EvaluationResult(candidate, {}),
                                           EvaluationResult(baseline, {}) if baseline is not None else None)
    except ModelValidationFailedException as err:
        return err.message
    finally:
        quiet.setLevel(level)
    return None


def _finite(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- report


def format_report(d: GateDecision, cfg: GateConfig) -> str:
    head = {PROMOTED: "PROMOTED -> champion moved" if d.promoted else "PROMOTED (dry run: would move champion)",
            NO_CHANGE: "NO CHANGE -> champion unchanged", WORSE: "WORSE -> champion unchanged",
            REFUSED: "REFUSED -> champion unchanged", LOST_RACE: "LOST RACE -> champion unchanged"}[d.outcome]
    lines = [f"Promotion gate: {head}",
             f"  candidate {d.candidate}, champion {d.champion or '(none)'}" + (" [dry run]" if d.dry_run else "")]
    cand, champ = d.candidate_metrics, d.champion_metrics
    if cand:
        lines.append(f"  {'metric':<12}{'candidate':>14}{'champion':>14}{'limit':>16}")
        limits = {"top1": f"+{cfg.min_top1_margin:g} & p<{1 - cfg.confidence:.3g}",
                  "latency_ms": f"<= {_num(cfg.max_latency_ms)}" if cfg.max_latency_ms else "",
                  "params": f"<= {_num(cfg.max_params)}" if cfg.max_params else ""}
        for k in ("top1", "top5", "n", "latency_ms", "params"):
            if k in cand:
                p = _fmt(champ.get(k, "-")) if champ is not None else "(none)"
                lines.append(f"  {k:<12}{_fmt(cand[k]):>14}{p:>14}{limits.get(k, ''):>16}")
        lines.append(f"  test clips: {cand.get('dataset_fingerprint')}; latency: median of {cfg.latency.repeats} "
                     f"interleaved forwards after {cfg.latency.warmup} warm-up, {cfg.latency.threads} thread(s), "
                     f"{cfg.latency.device}")
    lines += [f"  {d.outcome}: {r}" for r in d.reasons]
    return "\n".join(lines)


def _num(v: float) -> str:
    v = float(v)
    return f"{int(v):,}" if v.is_integer() else f"{v:.4g}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return str(v)
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"


# ----------------------------------------------------------------------------- the gate on the registry


def promote_if_better(registered_name: str, candidate_version: Union[int, str], evaluator: "Evaluator",
                      gate_cfg: GateConfig, *, tracking_uri: Optional[str] = None, registry=None,
                      dry_run: bool = False) -> GateDecision:
    """Measure the candidate (version or alias) and the champion with ``evaluator``, decide
    (:func:`evaluate_gate`) and, on ``promoted`` and not ``dry_run``, move ``champion`` with a
    compare-and-set under :meth:`ModelRegistry.champion_lock`: if the champion changed while the
    gate measured, nothing moves and the outcome is ``lost_race``. The candidate is tagged
    ``dtkd.gate.decision=pending`` first and its final decision last, so a killed gate never
    leaves a claim it did not make good. Exceptions propagate (tag ``error``); none moves champion."""
    from dtkd_ops.registry import ModelRegistry

    reg = registry or ModelRegistry(tracking_uri)
    cand = reg.get_version(registered_name, candidate_version)
    champ = reg.get_champion(registered_name)
    if champ is not None and champ.version == cand.version:
        d = GateDecision(NO_CHANGE, [f"{cand} already is the champion; nothing to decide"], candidate=str(cand),
                         champion=str(champ), dry_run=dry_run)
        d.report = format_report(d, gate_cfg)
        return d

    reg.tag_version(cand, {TAG_DECISION: "pending"})
    try:
        decision, measured = _measure_and_decide(reg, registered_name, cand, champ, evaluator, gate_cfg)
        decision.dry_run = dry_run
        if decision.outcome == PROMOTED and not dry_run:
            _compare_and_set(reg, registered_name, cand, champ, decision)
    except Exception as err:
        _safe_tag(reg, cand, {TAG_DECISION: "error", TAG_REPORT: f"{type(err).__name__}: {err}"})
        raise
    decision.report = format_report(decision, gate_cfg)
    reg.tag_version(cand, {TAG_DECISION: decision.tag, TAG_REPORT: decision.report})
    _log_gate_run(reg, registered_name, cand, decision, measured)
    return decision


def _measure_and_decide(reg, name: str, cand, champ, evaluator, cfg: GateConfig):
    from dtkd_ops.evaluation import TAG_TEST_FINGERPRINT, DataMismatch, count_params, label_mismatch, latency_ms

    labels = label_mismatch(cand, champ) if champ is not None else None
    if labels:
        return GateDecision(REFUSED, [f"data mismatch: {labels}"], candidate=str(cand), champion=str(champ)), []
    refs = [cand] + ([champ] if champ is not None else [])
    models = [reg.load_model(name, r.version) for r in refs]
    try:
        scores = [evaluator.scores(m, r) for m, r in zip(models, refs)]
    except DataMismatch as err:
        return GateDecision(REFUSED, [f"data mismatch: {err}"], candidate=str(cand),
                            champion=str(champ) if champ else None), []
    shapes = [tuple(int(s) for s in evaluator.latency_input(r)) for r in refs]
    lat = cfg.latency
    times = latency_ms(models, shapes, warmup=lat.warmup, repeats=lat.repeats, threads=lat.threads, device=lat.device)
    measured = [Measurement(str(r), s, count_params(m), t, shape)
                for r, m, s, t, shape in zip(refs, models, scores, times, shapes)]
    decision = evaluate_gate(measured[0], measured[1] if champ is not None else None, cfg,
                             expected_fingerprint=cand.tags.get(TAG_TEST_FINGERPRINT))
    return decision, measured


def _compare_and_set(reg, name: str, cand, champ, decision: GateDecision) -> None:
    """Move ``champion`` to ``cand`` only if it still is ``champ`` (the one the gate beat)."""
    with reg.champion_lock(name):
        now = reg.get_champion(name)
        if (now.version if now else None) != (champ.version if champ else None):
            decision.outcome = LOST_RACE
            decision.reasons.append(f"lost a concurrent promotion: champion moved to {now} while this gate ran "
                                    f"(it compared against {champ or 'no champion'}); re-run the gate")
            return
        decision.candidate = str(reg.set_champion(name, cand.version))  # the alias move, last
        decision.promoted = True


def _safe_tag(reg, ref, tags) -> None:
    try:
        reg.tag_version(ref, tags)
    except Exception:  # noqa: BLE001 - never hide the original error behind a tagging failure
        log.warning("could not tag %s with %s", ref, tags)


def _log_gate_run(reg, name: str, cand, decision: GateDecision, measured: Sequence[Measurement]) -> None:
    """An MLflow run per gate: both models' figures, the paired test, the report and the per-clip
    correctness table (video_id, candidate, champion) that the test was computed from."""
    import mlflow
    import pandas as pd

    numbers = {f"{side}.{k}": float(v) for side, m in (("candidate", decision.candidate_metrics),
                                                       ("champion", decision.champion_metrics or {}))
               for k, v in m.items() if k != "dataset_fingerprint" and _finite(v)}
    numbers.update({f"test.{k}": float(v) for k, v in (decision.test or {}).items() if _finite(v)})
    with reg._run(f"gate-{name}-v{cand.version}"):
        mlflow.set_tags({"dtkd.gate.model": name, "dtkd.gate.candidate": str(cand.version),
                         "dtkd.gate.champion": decision.champion or "none", TAG_DECISION: decision.tag,
                         "dtkd.gate.exit_code": str(decision.exit_code)})
        mlflow.log_metrics({**numbers, "promoted": float(decision.promoted)})
        mlflow.log_text(decision.report + "\n", "gate_report.txt")
        if measured:
            table = pd.DataFrame({"video_id": measured[0].scores.video_ids})
            for side, m in zip(("candidate", "champion"), measured):
                if m.scores.video_ids == measured[0].scores.video_ids:  # a refused pairing has no column
                    table[side] = [int(c) for c in m.scores.correct]
            mlflow.log_text(table.to_csv(index=False), "gate_clips.csv")
