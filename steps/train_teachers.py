"""Fine-tune (or reuse from the MLflow registry) the CNN and the ViT teacher."""
from __future__ import annotations

from typing import Annotated

import pandas as pd
from torch import nn
from zenml import log_metadata, step

from dtkd.config import RegistryConfig, TeacherStage
from dtkd.data import manifest_fingerprint
from dtkd_ops import registry as mlflow_registry
from dtkd_ops.home import tracking_uri
from dtkd_ops.pretrained import resolve_ref
from steps.data_version import current_data_tags
from steps.tracking import TRACKED, fit_and_test


def _teacher(manifest: pd.DataFrame, stage: TeacherStage, registry: RegistryConfig) -> nn.Module:
    role, ref = stage.role, stage.model
    registered_name = f"{registry.teacher_prefix}-{role}"
    if ref.source == "registry":
        teacher = mlflow_registry.load_model(registered_name, ref.registry_alias)
        log_metadata(metadata={"source": f"models:/{registered_name}@{ref.registry_alias}"})
        return teacher.eval()

    stage = stage.model_copy(update={"model": resolve_ref(ref, tracking_uri=tracking_uri())})
    job, metrics = fit_and_test(stage, manifest, f"{role}_teacher")
    version = mlflow_registry.register_candidate(
        job.model,
        registered_name=registered_name,
        metrics=metrics,
        params={"model": ref.name, "role": role},
        tags={"dtkd.role": f"{role}_teacher", **current_data_tags(stage.data)},
        dataset_fingerprint=manifest_fingerprint(manifest),
        input_spec=ref.input_spec(),
        build_options=ref.overrides,
    )
    # A teacher is a means to an end: the newest trained one becomes the reusable champion.
    mlflow_registry.set_alias(registered_name, "champion", version.version)
    log_metadata(metadata={"test_top1": metrics["top1"], "registered": f"{registered_name} v{version.version}"})
    print(f"{role} teacher ({ref.name}): test top-1 {metrics['top1']:.4f}, registered {registered_name} v{version.version}")
    return job.model


@step(**TRACKED)
def train_cnn_teacher(manifest: pd.DataFrame, stage: TeacherStage, registry: RegistryConfig) -> Annotated[nn.Module, "cnn_teacher"]:
    return _teacher(manifest, stage, registry)


@step(**TRACKED)
def train_vit_teacher(manifest: pd.DataFrame, stage: TeacherStage, registry: RegistryConfig) -> Annotated[nn.Module, "vit_teacher"]:
    return _teacher(manifest, stage, registry)
