"""Evaluate the student on the test split: top-1/top-5, params, FLOPs, latency (the gate's protocol),
confusion matrix: the run's headline figures. The promotion gate does not reuse them: it measures
candidate and champion side by side (steps/register.py)."""
from __future__ import annotations

from typing import Annotated

import mlflow
import pandas as pd
from torch import nn
from zenml import log_metadata, step

from dtkd.assemble import default_device
from dtkd.config import EvalConfig, ModelRef
from dtkd.data import DataConfig, class_names, num_classes_of
from dtkd.data.manifest import head_class_names, heads_of
from dtkd_ops.evaluation import evaluate_on_test_split
from dtkd_ops.gate import GateConfig
from steps.tracking import TRACKED, log_confusion_matrix


@step(**TRACKED)
def evaluate_student(
    student: nn.Module, manifest: pd.DataFrame, model: ModelRef, evaluation: EvalConfig, data: DataConfig,
    gate: GateConfig,
) -> Annotated[dict, "test_metrics"]:
    metrics, result, _ = evaluate_on_test_split(student, model.view(), manifest, gate, evaluation=evaluation, data=data,
                                                flops=True, device=str(default_device()))
    metrics["chance"] = 1.0 / num_classes_of(manifest)
    numbers = {k: float(v) for k, v in metrics.items() if k != "dataset_fingerprint"}
    mlflow.log_metrics({f"test/{k}": v for k, v in numbers.items()})
    heads = heads_of(manifest)  # multi-head: the confusion matrix is the first head's
    log_confusion_matrix(result.confusion, class_names(manifest) if heads is None
                         else head_class_names(manifest, heads.names[0]))
    log_metadata(metadata=numbers)
    print(f"student ({model.name}): test top-1 {metrics['top1']:.4f} "
          f"(top-5 {metrics['top5']:.4f}, {metrics['n']} clips), {metrics['latency_ms']:.1f} ms/clip")
    return metrics
