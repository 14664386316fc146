"""Register the student in MLflow as `challenger`; the promotion gate moves `champion` to it only if
it beats the current champion on the same test split and stays within the cost budget."""
from __future__ import annotations

from typing import Annotated

import pandas as pd
from torch import nn
from zenml import get_step_context, log_metadata, step
from zenml.enums import ModelStages

from dtkd.config import EvalConfig, ModelRef, RegistryConfig
from dtkd.data import DataConfig, manifest_fingerprint
from dtkd_ops import gate as promotion
from dtkd_ops import registry as mlflow_registry
from dtkd_ops.evaluation import evaluate_on_test_split
from steps.data_version import current_data_tags
from steps.tracking import TRACKED, numeric_leaves


@step(**TRACKED)
def register_student(
    student: nn.Module, test_metrics: dict, manifest: pd.DataFrame, model: ModelRef, method: str,
    evaluation: EvalConfig, data: DataConfig, registry: RegistryConfig, gate: promotion.GateConfig,
) -> Annotated[dict, "promotion_decision"]:
    name = registry.student_name
    candidate = mlflow_registry.register_candidate(
        student,
        registered_name=name,
        metrics=test_metrics,
        params={"student": model.name, "method": method},
        tags={"dtkd.role": "student", **current_data_tags()},
        dataset_fingerprint=manifest_fingerprint(manifest),
        input_spec=model.input_spec(),
    )

    # The champion is measured as evaluate_student measured the candidate: same clips, same budget.
    def measure_champion(champion: nn.Module) -> dict:
        metrics, _ = evaluate_on_test_split(champion, model.view(), manifest, gate, evaluation=evaluation, data=data)
        return metrics

    decision = promotion.promote_if_better(
        name,
        candidate.version,
        measure_champion,
        gate,
        dry_run=not registry.auto_promote,
        candidate_metrics=test_metrics,
    )
    promoted = decision.promote and registry.auto_promote
    log_metadata(metadata={"version": candidate.version, "promoted": promoted, "report": decision.report})
    print(decision.report)
    _mirror_in_model_control_plane(candidate, promoted, test_metrics, decision)
    return {
        "registered_model": name,
        "version": candidate.version,
        "gate_passed": decision.promote,
        "promoted": promoted,
        "reasons": decision.reasons,
    }


def _mirror_in_model_control_plane(candidate, promoted: bool, test_metrics: dict, decision) -> None:
    """The run's ZenML Model version (which already links this run's artifacts) records the MLflow
    version it became, and its stage mirrors the MLflow aliases: champion -> production,
    challenger -> staging (one version per stage; `force` archives the one it replaces)."""
    model = get_step_context().model
    if model is None:  # the pipeline was configured without a ZenML Model
        return
    model.log_metadata(
        {
            "mlflow": {"registered_model": candidate.name, "version": int(candidate.version), "uri": candidate.uri},
            "test_metrics": numeric_leaves(test_metrics),
            "gate": {"passed": decision.promote, "reasons": list(decision.reasons)},
        }
    )
    model.set_stage(ModelStages.PRODUCTION if promoted else ModelStages.STAGING, force=True)
