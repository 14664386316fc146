"""Distil the student from the frozen teachers with the configured method (DT-KD by default)."""
from __future__ import annotations

from typing import Annotated

import mlflow
import pandas as pd
from torch import nn
from zenml import log_metadata, step

from dtkd import workflows
from dtkd.config import ModelsConfig
from dtkd.data.config import DataConfig
from dtkd.distill import DistillConfig
from dtkd.engine import TrainConfig
from steps.checkpoints import checkpoint_dir, state_fingerprint
from steps.tracking import TRACKED, MlflowEpochLogger, log_params_flat


@step(**TRACKED)
def distill_student(
    manifest: pd.DataFrame,
    cnn_teacher: nn.Module,
    vit_teacher: nn.Module,
    models: dict,
    distill: dict,
    train: dict,
    data: dict,
) -> tuple[Annotated[nn.Module, "student"], Annotated[list, "distill_diagnostics"]]:
    refs = ModelsConfig.model_validate(models)
    distill_cfg = DistillConfig.model_validate(distill)
    train_cfg = TrainConfig.model_validate(train)
    log_params_flat({"distill": distill, "train": train, "student": models["student"]}, prefix="student.")
    student, result, diagnostics = workflows.distill_student(
        manifest,
        refs.student,
        {"cnn": (cnn_teacher, refs.cnn_teacher), "vit": (vit_teacher, refs.vit_teacher)},
        distill_cfg,
        train_cfg,
        DataConfig.model_validate(data),
        callbacks=[MlflowEpochLogger(prefix="student/")],
        checkpoint_dir=checkpoint_dir(
            "student", models, distill, train, data, workflows.manifest_fingerprint(manifest),
            state_fingerprint(cnn_teacher), state_fingerprint(vit_teacher),
        ),
    )
    for entry in diagnostics:
        scalars = {f"datw/{k}": float(v) for k, v in workflows.flat_scalars(entry).items() if k != "epoch"}
        if scalars:
            mlflow.log_metrics(scalars, step=int(entry["epoch"]))
    mlflow.log_dict({"diagnostics": diagnostics}, "distill_diagnostics.json")
    log_metadata(metadata={"method": distill_cfg.method, "epochs": train_cfg.epochs, "nonfinite_skipped": result.nonfinite_skipped})
    return student, diagnostics
