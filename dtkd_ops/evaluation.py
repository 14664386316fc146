"""Evaluators for the promotion gate: ``evaluate_fn(model, ref) -> metrics``.

* :func:`test_split_evaluator` re-evaluates a model on a manifest's test split with dtkd's own
  loader and :func:`dtkd.eval.evaluate` (top-1), and measures the budget (params, latency). Both
  the candidate and the champion go through the same function, so they are compared on the same
  clips. It reads the model's input view from the version's ``dtkd.input_spec`` tag (or the
  ``dtkd.model_name`` tag -> ``dtkd.models.get_spec``).
* :func:`recorded_metrics_evaluator` does no inference: it returns what the pipeline logged on the
  run that registered each version, with the dataset fingerprint, so the gate refuses to compare
  numbers measured on different data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pandas as pd

from dtkd.eval import measure_latency_ms
from dtkd.eval.complexity import count_params
from dtkd.workflows import manifest_fingerprint
from dtkd_ops._io import read_manifest
from dtkd_ops.gate import GateConfig
from dtkd_ops.registry import TAG_INPUT_SPEC, ModelRegistry, ModelVersionRef

VIEW_FIELDS = ("frames", "sampling_rate", "crop_size", "mean", "std")


def budget_metrics(model, cfg: GateConfig, input_shape=None) -> dict[str, float]:
    """``params`` and ``latency_ms`` as the gate's budget defines them."""
    shape = cfg.latency.input_shape or input_shape
    if shape is None:
        raise ValueError("latency.input_shape is null in the gate config and the model's input view is unknown")
    return {"params": count_params(model),
            "latency_ms": measure_latency_ms(model, shape, warmup=cfg.latency.warmup,
                                             repeats=cfg.latency.repeats, device=cfg.latency.device)}


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
    """``evaluate_fn(model, ref)`` on the ``split`` rows of ``manifest`` with dtkd's ClipDataset."""
    df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else manifest
    if not (df["split"] == split).any():
        raise ValueError(f"manifest has no '{split}' rows (splits: {sorted(df['split'].unique())})")
    fingerprint = manifest_fingerprint(df, split)

    def evaluate_fn(model, ref: ModelVersionRef) -> dict:
        from torch.utils.data import DataLoader

        from dtkd.data import ClipDataset, ViewSpec
        from dtkd.eval import evaluate

        spec = input_spec_of(ref)
        num_classes = int(ref.tags.get("dtkd.num_classes", int(df["label_idx"].max()) + 1))
        ds = ClipDataset(df, split, views={"student": ViewSpec(**{k: spec[k] for k in VIEW_FIELDS})},
                         train=False, num_clips=num_clips, num_crops=num_crops)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        result = evaluate(model, loader, num_classes=num_classes, view="student", device=device)
        shape = [1, 3, spec["frames"], spec["crop_size"], spec["crop_size"]]
        return {"top1": float(result.top1), "top5": float(result.top5), "n": int(result.n),
                **budget_metrics(model, cfg, shape), "dataset_fingerprint": fingerprint}

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
