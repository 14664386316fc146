"""Promotion gate: a candidate replaces the ``champion`` only if it is better on the same test split
and fits the deployment budget.

* :func:`evaluate_gate` is pure: metrics in, :class:`GateDecision` out. It fails closed: a missing
  or non-finite metric, a budget overrun, metrics measured on different datasets, or a margin not
  met all mean "do not promote", each with a reason.
* :func:`promote_if_better` loads the candidate and the champion from the registry, evaluates both
  with the caller's ``evaluate_fn`` on the same data, records the decision on the candidate version
  (tags + a ``gate`` run with the report) and, only when the decision is to promote, moves
  ``champion`` as its very last write. An exception anywhere before that leaves ``champion`` as it
  was.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dtkd_ops._io import format_validation_error, load_yaml_mapping

Metrics = Mapping[str, Any]
EvaluateFn = Callable[..., Metrics]  # evaluate_fn(model) or evaluate_fn(model, ref) -> metrics
_EPS = 1e-12


class LatencySpec(BaseModel):
    """How the latency budget is measured: one forward pass of an input of ``input_shape``."""

    model_config = ConfigDict(extra="forbid")

    input_shape: Optional[list[int]] = Field(None, min_length=5, max_length=5)  # B,C,T,H,W; None: model's own
    warmup: int = Field(1, ge=0)
    repeats: int = Field(5, ge=1)
    device: str = "cpu"


class GateConfig(BaseModel):
    """``configs/gate.yaml``; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    metric: str = "top1"  # the quality metric evaluate_fn returns (higher is better)
    min_top1_margin: float = Field(0.0, ge=0.0)  # candidate - champion must be > 0 and >= this
    max_params: Optional[int] = Field(None, gt=0)  # budget on "params"; None = unlimited
    max_latency_ms: Optional[float] = Field(None, gt=0)  # budget on "latency_ms"; None = unlimited
    latency: LatencySpec = LatencySpec()
    require_same_dataset: bool = True  # refuse when the two metrics carry different dataset fingerprints


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


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]  # why it failed (every failed check) or, when it passes, the checks passed
    report: str  # readable table + reasons
    passed: list[str] = field(default_factory=list)
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: Optional[dict[str, Any]] = None
    candidate: Optional[str] = None  # "name vN"
    champion: Optional[str] = None
    promoted: bool = False  # champion actually moved (False for a dry run)
    already_champion: bool = False  # the candidate already is the champion: nothing to decide

    def to_dict(self) -> dict:
        return asdict(self)


def _number(metrics: Metrics, key: str) -> tuple[Optional[float], Optional[str]]:
    if key not in metrics:
        return None, f"missing '{key}' (got keys {sorted(metrics)})"
    try:
        value = float(metrics[key])
    except (TypeError, ValueError):
        return None, f"'{key}' is not a number ({metrics[key]!r})"
    if not math.isfinite(value):
        return None, f"'{key}' is not finite ({value})"
    return value, None


def evaluate_gate(candidate_metrics: Metrics, champion_metrics: Optional[Metrics], budget: GateConfig, *,
                  title: str = "") -> GateDecision:
    """Decide whether the candidate may replace the champion (``None``: there is none).

    Promote iff every check passes: the candidate's metric is a finite number, ``params`` and
    ``latency_ms`` are within budget (when a budget is set), and, with a champion, both metrics were
    measured on the same dataset and ``candidate - champion > 0`` and ``>= min_top1_margin``.
    """
    m, fails, passes = budget.metric, [], []
    cand, err = _number(candidate_metrics, m)
    if err:
        fails.append(f"candidate metric {err}")

    for key, limit, unit in (("params", budget.max_params, ""), ("latency_ms", budget.max_latency_ms, " ms")):
        if limit is None:
            continue
        value, err = _number(candidate_metrics, key)
        if err:
            fails.append(f"budget: candidate {err}")
        elif value > limit:
            fails.append(f"budget: {key} {_num(value)}{unit} > max {_num(limit)}{unit}")
        else:
            passes.append(f"budget: {key} {_num(value)}{unit} <= max {_num(limit)}{unit}")

    champ = None
    if champion_metrics is None:
        passes.append("no champion yet: the first model within budget is promoted")
    else:
        champ, err = _number(champion_metrics, m)
        if err:
            fails.append(f"champion metric {err}")
        fp_c, fp_p = candidate_metrics.get("dataset_fingerprint"), champion_metrics.get("dataset_fingerprint")
        if budget.require_same_dataset and fp_c is not None and fp_p is not None and fp_c != fp_p:
            fails.append(f"metrics come from different datasets (candidate {fp_c}, champion {fp_p}); "
                         f"re-evaluate both on one test split")
        if cand is not None and champ is not None:
            delta = cand - champ
            need = f"> 0 and >= {budget.min_top1_margin:.4g}"
            if delta > 0 and delta + _EPS >= budget.min_top1_margin:
                passes.append(f"{m}: {cand:.4f} vs champion {champ:.4f} (delta {delta:+.4f} {need})")
            else:
                fails.append(f"{m}: {cand:.4f} vs champion {champ:.4f} (delta {delta:+.4f}, needs {need})")

    promote = not fails
    report = _report(promote, fails, passes, candidate_metrics, champion_metrics, budget, title)
    return GateDecision(promote=promote, reasons=fails if fails else passes, report=report, passed=passes,
                        candidate_metrics=dict(candidate_metrics),
                        champion_metrics=dict(champion_metrics) if champion_metrics is not None else None)


def _num(v: float) -> str:
    """27 -> '27', 5000000 -> '5,000,000', 0.1 -> '0.1', 12.3456 -> '12.35'."""
    v = float(v)
    return f"{int(v):,}" if v.is_integer() else f"{v:.4g}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    return str(v)


def _report(promote: bool, fails: list[str], passes: list[str], cand: Metrics, champ: Optional[Metrics],
            budget: GateConfig, title: str = "") -> str:
    keys = [budget.metric, "latency_ms", "params"]
    keys += sorted(k for k in set(cand) | set(champ or {}) if k not in keys and k != "dataset_fingerprint")
    limits = {"params": budget.max_params, "latency_ms": budget.max_latency_ms}
    lines = [f"Promotion gate: {'PASS -> promote' if promote else 'FAIL -> champion unchanged'}"]
    if title:
        lines.append(f"  {title}")
    lines.append(f"  {'metric':<14}{'candidate':>14}{'champion':>14}{'budget':>14}")
    for k in keys:
        c = _fmt(cand.get(k, "-"))
        p = _fmt(champ.get(k, "-")) if champ is not None else "(none)"
        b = f"<= {_num(limits[k])}" if limits.get(k) is not None else (
            f"+{budget.min_top1_margin:g}" if k == budget.metric else "")
        lines.append(f"  {k:<14}{c:>14}{p:>14}{b:>14}")
    for r in fails:
        lines.append(f"  FAIL  {r}")
    for r in passes:
        lines.append(f"  ok    {r}")
    return "\n".join(lines)


def _call_evaluate(evaluate_fn: EvaluateFn, model, ref) -> dict:
    """``evaluate_fn(model)``, or ``evaluate_fn(model, ref)`` when it takes two positional args."""
    try:
        params = [p for p in inspect.signature(evaluate_fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        two = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):
        two = False
    metrics = evaluate_fn(model, ref) if two else evaluate_fn(model)
    if not isinstance(metrics, Mapping):
        raise TypeError(f"evaluate_fn must return a mapping of metrics, got {type(metrics).__name__}")
    return dict(metrics)


def promote_if_better(
    registered_name: str,
    candidate_version: Union[int, str],
    evaluate_fn: EvaluateFn,
    gate_cfg: GateConfig,
    *,
    tracking_uri: Optional[str] = None,
    registry=None,
    dry_run: bool = False,
    candidate_metrics: Optional[Metrics] = None,
) -> GateDecision:
    """Evaluate the candidate (version number or alias) and the current champion with
    ``evaluate_fn`` on the same data and move ``champion`` to the candidate only if
    :func:`evaluate_gate` says so. ``candidate_metrics``: the candidate was already measured with
    the same function (the pipeline's evaluate step): it is not loaded and measured again.
    ``dry_run``: decide and report, move nothing (``dtkd gate``). Exceptions propagate; they never
    move ``champion``."""
    from dtkd_ops.registry import ModelRegistry

    reg = registry or ModelRegistry(tracking_uri)
    cand = reg.get_version(registered_name, candidate_version)
    champ = reg.get_champion(registered_name)
    if champ is not None and champ.version == cand.version:
        msg = f"{cand} is already the champion; nothing to do"
        return GateDecision(promote=False, reasons=[msg], report=f"Promotion gate: no-op\n  {msg}",
                            candidate=str(cand), champion=str(champ), already_champion=True)

    try:
        cand_metrics = (dict(candidate_metrics) if candidate_metrics is not None
                        else _call_evaluate(evaluate_fn, reg.load_model(registered_name, cand.version), cand))
        champ_metrics = None
        if champ is not None:
            champ_metrics = _call_evaluate(evaluate_fn, reg.load_model(registered_name, champ.version), champ)
        title = f"candidate {cand}, champion {champ or '(none)'}" + (" [dry run]" if dry_run else "")
        decision = evaluate_gate(cand_metrics, champ_metrics, gate_cfg, title=title)
    except Exception as err:
        _safe_tag(reg, cand, {"dtkd.gate.decision": "error", "dtkd.gate.report": f"{type(err).__name__}: {err}"})
        raise
    decision.candidate, decision.champion = str(cand), str(champ) if champ else None

    verdict = ("pass" if decision.promote else "fail") + ("-dry-run" if dry_run else "")
    reg.tag_version(cand, {"dtkd.gate.decision": verdict, "dtkd.gate.report": decision.report})
    _log_gate_run(reg, registered_name, cand, decision, verdict)
    if decision.promote and not dry_run:
        with reg.champion_lock(registered_name):  # the check and the move are one step
            now = reg.get_champion(registered_name)
            if (now.version if now else None) != (champ.version if champ else None):
                # another promotion won meanwhile: this decision compared against a stale champion
                decision.promote = False
                decision.reasons = [f"champion moved to {now} while the gate ran (was {champ or 'none'}); "
                                    f"re-run the gate against the new champion"]
                decision.report += "\n  FAIL  " + decision.reasons[0]
                reg.tag_version(cand, {"dtkd.gate.decision": "stale"})
                return decision
            decision.candidate = str(reg.set_champion(registered_name, cand.version))  # the last write
            decision.promoted = True
    return decision


def _safe_tag(reg, ref, tags: Mapping[str, str]) -> None:
    try:
        reg.tag_version(ref, tags)
    except Exception:  # never hide the original error behind a tagging failure
        pass


def _log_gate_run(reg, registered_name: str, cand, decision: GateDecision, verdict: str) -> None:
    """An MLflow run per gate evaluation: both models' numeric metrics and the report."""
    import mlflow

    def numeric(prefix: str, metrics: Optional[Mapping[str, Any]]) -> dict[str, float]:
        out = {}
        for k, v in (metrics or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                out[f"{prefix}{k}"] = float(v)
        return out

    with reg._run(f"gate-{registered_name}-v{cand.version}"):
        mlflow.set_tags({"dtkd.gate.model": registered_name, "dtkd.gate.candidate": str(cand.version),
                         "dtkd.gate.champion": decision.champion or "none", "dtkd.gate.decision": verdict})
        mlflow.log_metrics({**numeric("candidate.", decision.candidate_metrics),
                            **numeric("champion.", decision.champion_metrics),
                            "promote": float(decision.promote)})
        mlflow.log_text(decision.report + "\n", "gate_report.txt")
