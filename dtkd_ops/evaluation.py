"""Evaluators for the promotion gate: ``evaluate_fn(model, ref) -> metrics``.

* :func:`evaluate_on_test_split` is the one measurement of a model on a test split: top-1/top-5
  with dtkd's own loader (``dtkd.assemble.evaluate_model``) and the budget (params, latency, and
  GFLOPs on request) measured as the gate config says (``dtkd.eval.complexity.inference_cost``).
  The pipeline's evaluate step measures the candidate with it, and the gate the champion, so the
  two are compared on the same clips and the same latency protocol.
* :func:`test_split_evaluator` is that measurement for the ``dtkd gate``/``promote`` CLI: it reads
  a version's input view from its ``dtkd.input_spec`` tag (or ``dtkd.model_name`` ->
  ``dtkd.models.get_spec``).
* :func:`recorded_metrics_evaluator` does no inference: it returns what the pipeline logged on the
  run that registered each version, with the dataset fingerprint, so the gate refuses to compare
  numbers measured on different data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pandas as pd

from dtkd.assemble import evaluate_model
from dtkd.config import EvalConfig
from dtkd.data import DataConfig, ViewSpec, manifest_fingerprint
from dtkd.eval import EvalResult
from dtkd.eval.complexity import inference_cost
from dtkd_ops._io import read_manifest
from dtkd_ops.gate import GateConfig
from dtkd_ops.registry import TAG_INPUT_SPEC, ModelRegistry, ModelVersionRef

VIEW_FIELDS = ("frames", "sampling_rate", "crop_size", "mean", "std")


def evaluate_on_test_split(model, view: ViewSpec, manifest: pd.DataFrame, gate: GateConfig, *,
                           evaluation: Optional[EvalConfig] = None, data: Optional[DataConfig] = None,
                           split: str = "test", flops: bool = False, device: str = "cpu") -> tuple[dict, EvalResult]:
    """(metrics, the full EvalResult) of ``model`` on ``split``: ``top1``, ``top5``, ``loss``, ``n``,
    ``params``, ``latency_ms`` (``gflops`` with ``flops``) and the split's ``dataset_fingerprint``."""
    import torch

    result = evaluate_model(model, view, manifest, evaluation, data, split=split, device=torch.device(device))
    shape = gate.latency.input_shape or [1, 3, view.frames, view.crop_size, view.crop_size]
    cost = inference_cost(model, shape, flops=flops, warmup=gate.latency.warmup, repeats=gate.latency.repeats,
                          device=gate.latency.device)
    metrics = {"top1": float(result.top1), "top5": float(result.top5), "loss": float(result.loss), "n": int(result.n),
               **cost, "dataset_fingerprint": manifest_fingerprint(manifest, split)}
    return metrics, result


def input_spec_of(ref: ModelVersionRef) -> dict[str, Any]:
    """The model's input view from its version tags (``dtkd.input_spec`` or ``dtkd.model_name``)."""
    if TAG_INPUT_SPEC in ref.tags:
        spec = json.loads(ref.tags[TAG_INPUT_SPEC])
    elif "dtkd.model_name" in ref.tags:
        from dtkd.models import get_spec

        s = get_spec(ref.tags["dtkd.model_name"])
        src = getattr(s, "input", s)
        spec = {k: getattr(src, k) for k in VIEW_FIELDS}
    else:
        raise ValueError(f"{ref}: no '{TAG_INPUT_SPEC}' or 'dtkd.model_name' tag; cannot build its test view "
                         f"(register with input_spec=...)")
    missing = [k for k in VIEW_FIELDS if k not in spec]
    if missing:
        raise ValueError(f"{ref}: input spec lacks {missing}: {spec}")
    return spec


def test_split_evaluator(manifest: Union[pd.DataFrame, str, Path], cfg: GateConfig, *, split: str = "test",
                         batch_size: int = 8, num_clips: int = 1, num_crops: int = 1, device: str = "cpu",
                         num_workers: int = 0) -> Callable[[Any, ModelVersionRef], dict]:
    """``evaluate_fn(model, ref)`` on the ``split`` rows of ``manifest`` (:func:`evaluate_on_test_split`)."""
    df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else manifest
    if not (df["split"] == split).any():
        raise ValueError(f"manifest has no '{split}' rows (splits: {sorted(df['split'].unique())})")
    evaluation = EvalConfig(num_clips=num_clips, num_crops=num_crops, batch_size=batch_size)
    data = DataConfig(num_workers=num_workers)

    def evaluate_fn(model, ref: ModelVersionRef) -> dict:
        spec = input_spec_of(ref)
        view = ViewSpec(**{k: spec[k] for k in VIEW_FIELDS})
        metrics, _ = evaluate_on_test_split(model, view, df, cfg, evaluation=evaluation, data=data, split=split,
                                            device=device)
        return metrics

    return evaluate_fn


def recorded_metrics_evaluator(registry: ModelRegistry) -> Callable[[Any, ModelVersionRef], dict]:
    """``evaluate_fn(model, ref)`` returning the metrics logged when ``ref`` was registered."""

    def evaluate_fn(model, ref: ModelVersionRef) -> dict:
        metrics: dict[str, Any] = registry.run_metrics(ref)
        if "params" in metrics:
            metrics["params"] = int(metrics["params"])
        if ref.dataset_fingerprint:
            metrics["dataset_fingerprint"] = ref.dataset_fingerprint
        return metrics

    return evaluate_fn
