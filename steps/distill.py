"""Distil the student from the frozen teachers with the configured method (DT-KD by default)."""
from __future__ import annotations

from typing import Annotated

import mlflow
import pandas as pd
from torch import nn
from zenml import log_metadata, step

from dtkd.assemble import build_job
from dtkd.config import DistillStage
from dtkd.data import manifest_fingerprint
from dtkd_ops.pretrained import resolve_ref
from steps.checkpoints import state_fingerprint, step_checkpoints
from steps.materializers import ModelMaterializer
from steps.stack import tracking_uri
from steps.tracking import TRACKED, MlflowEpochLogger, log_params_flat, numeric_leaves


# The student is stored as build recipe + state dict (steps.materializers), never pickled.
@step(**TRACKED, output_materializers={"student": ModelMaterializer})
def distill_student(
    manifest: pd.DataFrame, cnn_teacher: nn.Module, vit_teacher: nn.Module, stage: DistillStage
) -> tuple[Annotated[nn.Module, "student"], Annotated[list, "distill_diagnostics"]]:
    stage = stage.model_copy(update={"student": resolve_ref(stage.student, tracking_uri=tracking_uri())})
    stage_json = stage.model_dump(mode="json")
    log_params_flat({k: stage_json[k] for k in ("distill", "train", "student")}, prefix="student.")
    job = build_job(stage, manifest, teachers={"cnn": cnn_teacher, "vit": vit_teacher})
    with step_checkpoints("student", stage_json, manifest_fingerprint(manifest), state_fingerprint(cnn_teacher),
                          state_fingerprint(vit_teacher)) as directory:
        result = job.fit(callbacks=[MlflowEpochLogger(prefix="student/")], checkpoint_dir=directory)
    diagnostics = job.diagnostics.records
    for entry in diagnostics:
        scalars = numeric_leaves({k: v for k, v in entry.items() if k != "epoch"}, prefix="datw/")
        if scalars:
            mlflow.log_metrics(scalars, step=int(entry["epoch"]))
    mlflow.log_dict({"diagnostics": diagnostics}, "distill_diagnostics.json")
    log_metadata(metadata={"method": stage.distill.method, "epochs": stage.train.epochs,
                           "nonfinite_skipped": result.nonfinite_skipped})
    return job.model, diagnostics
