"""Register the student in MLflow as `challenger`; the promotion gate moves `champion` to it only if
it beats the current champion on the same test split and stays within the cost budget."""
from __future__ import annotations

from typing import Annotated

import pandas as pd
from torch import nn
from zenml import get_step_context, log_metadata, step
from zenml.enums import ModelStages

from dtkd import workflows
from dtkd.config import validate_config
from dtkd_ops import gate as promotion
from dtkd_ops import registry as mlflow_registry
from dtkd_ops.evaluation import budget_metrics
from steps.data_version import current_data_tags
from steps.tracking import TRACKED


@step(**TRACKED)
def register_student(
    student: nn.Module, test_metrics: dict, manifest: pd.DataFrame, config: dict
) -> Annotated[dict, "promotion_decision"]:
    cfg = validate_config(config)
    name = cfg.registry.student_name
    candidate = mlflow_registry.register_candidate(
        student,
        registered_name=name,
        metrics=test_metrics,
        params={"student": cfg.models.student.name, "method": cfg.distill.method},
        tags={"dtkd.role": "student", **current_data_tags()},
        dataset_fingerprint=workflows.manifest_fingerprint(manifest),
        input_spec=workflows.input_spec(cfg.models.student),
    )

    gate_cfg = promotion.load_gate_config(cfg.registry.gate_config)
    view = workflows.view_for(cfg.models.student)
    view_shape = (1, 3, view.frames, view.crop_size, view.crop_size)

    # Candidate and champion go through this same function: same clips, same budget measurement.
    def evaluate_on_this_split(model: nn.Module) -> dict:
        result = workflows.evaluate_model(model, cfg.models.student, manifest, cfg.evaluation, cfg.data)
        return {
            "top1": result.top1,
            "dataset_fingerprint": workflows.manifest_fingerprint(manifest, "test"),
            **budget_metrics(model, gate_cfg, view_shape),
        }

    decision = promotion.promote_if_better(
        name,
        candidate.version,
        evaluate_on_this_split,
        gate_cfg,
        dry_run=not cfg.registry.auto_promote,
    )
    promoted = decision.promote and cfg.registry.auto_promote
    log_metadata(metadata={"version": candidate.version, "promoted": promoted, "report": decision.report})
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
            "test_metrics": {k: float(v) for k, v in test_metrics.items()},
            "gate": {"passed": decision.promote, "reasons": list(decision.reasons)},
        }
    )
    model.set_stage(ModelStages.PRODUCTION if promoted else ModelStages.STAGING, force=True)
