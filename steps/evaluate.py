"""Evaluate the student on the test split: top-1/top-5, params, FLOPs, CPU latency, confusion matrix."""
from __future__ import annotations

from typing import Annotated

import mlflow
import pandas as pd
from torch import nn
from zenml import log_metadata, step

from dtkd import workflows
from dtkd.config import EvalConfig, ModelRef
from dtkd.data import class_names
from dtkd.data.config import DataConfig
from steps.tracking import TRACKED, log_confusion_matrix


@step(**TRACKED)
def evaluate_student(
    student: nn.Module, manifest: pd.DataFrame, model: dict, evaluation: dict, data: dict
) -> Annotated[dict, "test_metrics"]:
    ref = ModelRef.model_validate(model)
    result = workflows.evaluate_model(student, ref, manifest, EvalConfig.model_validate(evaluation), DataConfig.model_validate(data))
    metrics = {"top1": result.top1, "top5": result.top5, "loss": result.loss, "n_test": result.n}
    metrics.update(workflows.cost_metrics(student, ref))
    metrics["chance"] = 1.0 / workflows.num_classes_of(manifest)
    mlflow.log_metrics({f"test/{k}": float(v) for k, v in metrics.items()})
    log_confusion_matrix(result.confusion, class_names(manifest))
    log_metadata(metadata={k: float(v) for k, v in metrics.items()})
    return metrics
