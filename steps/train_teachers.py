"""Fine-tune (or reuse from the MLflow registry) the CNN and the ViT teacher."""
from __future__ import annotations

from typing import Annotated

import pandas as pd
from torch import nn
from zenml import log_metadata, step

from dtkd.assemble import default_device
from dtkd.config import RegistryConfig, TeacherStage
from dtkd.data import manifest_fingerprint
from dtkd_ops import gate as promotion
from dtkd_ops import registry as mlflow_registry
from dtkd_ops.evaluation import TestSplitEvaluator, gate_tags
from steps.stack import tracking_uri
from dtkd_ops.pretrained import resolve_ref
from steps.data_version import lineage_tags
from steps.materializers import ModelMaterializer
from steps.tracking import TRACKED, fit_and_test


def _teacher(manifest: pd.DataFrame, stage: TeacherStage, registry: RegistryConfig,
             gate: promotion.GateConfig) -> nn.Module:
    role, ref = stage.role, stage.model
    registered_name = f"{registry.teacher_prefix}-{role}"
    store = mlflow_registry.ModelRegistry(tracking_uri())  # the stack's registry (steps/stack.py)
    if ref.source == "registry":
        teacher = store.load_model(registered_name, ref.registry_alias)
        log_metadata(metadata={"source": f"models:/{registered_name}@{ref.registry_alias}"})
        return teacher.eval()

    stage = stage.model_copy(update={"model": resolve_ref(ref, tracking_uri=store.tracking_uri)})
    job, metrics = fit_and_test(stage, manifest, f"{role}_teacher")
    version = store.register_candidate(
        job.model,
        registered_name=registered_name,
        metrics=metrics,
        params={"model": ref.name, "role": role},
        tags={"dtkd.role": f"{role}_teacher", **lineage_tags(stage.data), **gate_tags(manifest, stage.evaluation)},
        dataset_fingerprint=manifest_fingerprint(manifest),
        input_spec=ref.input_spec(),
        build_options=ref.overrides,
    )
    print(f"{role} teacher ({ref.name}): test top-1 {metrics['top1']:.4f}, registered {registered_name} v{version.version}")
    # Teachers are gated too: the same gate as the student's (both measured side by side on these
    # test clips, paired test), without the student's deployment budgets. A significantly worse
    # teacher never becomes `champion`, and this run distils from the champion instead.
    teacher_gate = gate.model_copy(update={"max_params": None, "max_latency_ms": None})
    evaluator = TestSplitEvaluator(manifest, evaluation=stage.evaluation, data=stage.data, device=str(default_device()),
                                   metric=gate.metric)
    decision = promotion.promote_if_better(registered_name, version.version, evaluator, teacher_gate, registry=store)
    print(decision.report)
    print(f"gate decision for {registered_name} v{version.version}: {decision.tag}")
    log_metadata(metadata={"test_top1": metrics["top1"], "registered": f"{registered_name} v{version.version}",
                           "gate_decision": decision.tag})
    if decision.outcome == promotion.WORSE:
        print(f"{role} teacher: distilling from the champion {registered_name}@champion, not from v{version.version}")
        return store.load_model(registered_name, "champion").eval()
    return job.model


# Teachers are stored as build recipe + state dict (steps.materializers), never pickled.
@step(**TRACKED, output_materializers={"cnn_teacher": ModelMaterializer})
def train_cnn_teacher(manifest: pd.DataFrame, stage: TeacherStage, registry: RegistryConfig,
                      gate: promotion.GateConfig) -> Annotated[nn.Module, "cnn_teacher"]:
    return _teacher(manifest, stage, registry, gate)


@step(**TRACKED, output_materializers={"vit_teacher": ModelMaterializer})
def train_vit_teacher(manifest: pd.DataFrame, stage: TeacherStage, registry: RegistryConfig,
                      gate: promotion.GateConfig) -> Annotated[nn.Module, "vit_teacher"]:
    return _teacher(manifest, stage, registry, gate)
