"""Fine-tune (or reuse from the MLflow registry) the CNN and the ViT teacher."""
from __future__ import annotations

from typing import Annotated

import mlflow
import pandas as pd
from torch import nn
from zenml import log_metadata, step

from dtkd import workflows
from dtkd.config import EvalConfig, RegistryConfig, TeacherRef
from dtkd.data.config import DataConfig
from dtkd.engine import TrainConfig
from dtkd_ops import registry as mlflow_registry
from steps.checkpoints import checkpoint_dir
from steps.data_version import current_data_tags
from steps.tracking import TRACKED, MlflowEpochLogger, log_params_flat


def _teacher(manifest: pd.DataFrame, role: str, model: dict, train: dict, data: dict, registry: dict,
             evaluation: dict) -> nn.Module:
    ref = TeacherRef.model_validate(model)
    reg = RegistryConfig.model_validate(registry)
    registered_name = f"{reg.teacher_prefix}-{role}"
    if ref.source == "registry":
        teacher = mlflow_registry.load_model(registered_name, ref.registry_alias)
        log_metadata(metadata={"source": f"models:/{registered_name}@{ref.registry_alias}"})
        return teacher.eval()

    train_cfg = TrainConfig.model_validate(train)
    data_cfg = DataConfig.model_validate(data)
    log_params_flat({"model": model, "train": train}, prefix=f"{role}_teacher.")
    teacher, _ = workflows.train_teacher(
        manifest,
        ref,
        train_cfg,
        data_cfg,
        callbacks=[MlflowEpochLogger(prefix=f"{role}_teacher/")],
        checkpoint_dir=checkpoint_dir(f"{role}_teacher", model, train, data, workflows.manifest_fingerprint(manifest)),
    )
    # The run's multi-view test protocol, as the student gets (the trainer validates on one view).
    test = workflows.evaluate_model(teacher, ref, manifest, EvalConfig.model_validate(evaluation), data_cfg)
    metrics = {"top1": test.top1, "top5": test.top5}
    mlflow.log_metrics({f"{role}_teacher/test_{k}": v for k, v in metrics.items()})
    version = mlflow_registry.register_candidate(
        teacher,
        registered_name=registered_name,
        metrics=metrics,
        params={"model": ref.name, "role": role},
        tags={"dtkd.role": f"{role}_teacher", **current_data_tags()},
        dataset_fingerprint=workflows.manifest_fingerprint(manifest),
        input_spec=workflows.input_spec(ref),
    )
    # A teacher is a means to an end: the newest trained one becomes the reusable champion.
    mlflow_registry.set_alias(registered_name, "champion", version.version)
    log_metadata(metadata={"test_top1": metrics["top1"], "registered": f"{registered_name} v{version.version}"})
    return teacher


@step(**TRACKED)
def train_cnn_teacher(manifest: pd.DataFrame, model: dict, train: dict, data: dict, registry: dict,
                      evaluation: dict) -> Annotated[nn.Module, "cnn_teacher"]:
    return _teacher(manifest, "cnn", model, train, data, registry, evaluation)


@step(**TRACKED)
def train_vit_teacher(manifest: pd.DataFrame, model: dict, train: dict, data: dict, registry: dict,
                      evaluation: dict) -> Annotated[nn.Module, "vit_teacher"]:
    return _teacher(manifest, "vit", model, train, data, registry, evaluation)
