"""Register the student in MLflow as `challenger`, then run the promotion gate on it: the same
:func:`dtkd_ops.gate.promote_if_better` as `dtkd gate`/`dtkd promote`, which loads the candidate
and the champion from the registry and measures both here, on this run's test clips."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import pandas as pd
from torch import nn
from zenml import get_step_context, log_metadata, step

from dtkd.assemble import default_device
from dtkd.config import EvalConfig, ModelRef, RegistryConfig
from dtkd.data import DataConfig, manifest_fingerprint
from dtkd_ops import gate as promotion
from dtkd_ops import registry as mlflow_registry
from dtkd_ops.evaluation import TEST_MANIFEST_ARTIFACT, TestSplitEvaluator, gate_tags
from steps.caching import NEVER_CACHED
from steps.data_version import lineage_tags
from steps.stack import tracking_uri
from steps.tracking import TRACKED, numeric_leaves


# Never served from cache: it writes to the registry (a new version, the gate's decision, maybe the
# champion), so a cached run would report a registration that did not happen in it. A run config's
# `enable_cache: true` would override a plain `enable_cache=False` (steps/caching.py).
@step(**TRACKED, **NEVER_CACHED)
def register_student(
    student: nn.Module, test_metrics: dict, manifest: pd.DataFrame, model: ModelRef, method: str,
    evaluation: EvalConfig, data: DataConfig, registry: RegistryConfig, gate: promotion.GateConfig,
    teachers: dict | None = None,
) -> Annotated[dict, "promotion_decision"]:
    name = registry.student_name
    store = mlflow_registry.ModelRegistry(tracking_uri())  # the stack's registry (steps/stack.py)
    with tempfile.TemporaryDirectory() as tmp:
        # The test clips go with the candidate, so `dtkd gate` judges it on exactly these.
        test_manifest = Path(tmp) / Path(TEST_MANIFEST_ARTIFACT).name
        manifest[manifest["split"] == "test"].to_parquet(test_manifest, index=False)
        candidate = store.register_candidate(
            student,
            registered_name=name,
            metrics=test_metrics,
            params={"student": model.name, "method": method},
            tags={"dtkd.role": "student", **lineage_tags(data), **gate_tags(manifest, evaluation)},
            dataset_fingerprint=manifest_fingerprint(manifest),
            input_spec=model.input_spec(), build_options=model.overrides, teachers=teachers,
            artifacts={str(Path(TEST_MANIFEST_ARTIFACT).parent): test_manifest},
        )

    evaluator = TestSplitEvaluator(manifest, evaluation=evaluation, data=data, device=str(default_device()),
                                   input_shape=gate.latency.input_shape, metric=gate.metric)
    decision = promotion.promote_if_better(name, candidate.version, evaluator, gate, registry=store,
                                           dry_run=not registry.auto_promote)
    log_metadata(metadata={"version": candidate.version, "promoted": decision.promoted, "decision": decision.tag,
                           "report": decision.report})
    print(decision.report)
    print(f"gate decision for {candidate.name} v{candidate.version}: {decision.tag}")
    _mirror_in_model_control_plane(candidate, decision.promoted, test_metrics, decision)
    return {
        "registered_model": name,
        "version": candidate.version,
        "decision": decision.tag,
        "outcome": decision.outcome,
        "promoted": decision.promoted,
        "reasons": decision.reasons,
    }


def _mirror_in_model_control_plane(candidate, promoted: bool, test_metrics: dict, decision) -> None:
    """The run's ZenML Model version (which already links this run's artifacts) becomes the twin of
    the MLflow version it registered: named ``v<N>`` after it, with the link in its metadata, and
    every linked version's stage set from the MLflow aliases (pipelines.model_stages: champion ->
    production, challenger -> staging), the same function a rollback runs."""
    from zenml.client import Client

    from steps.model_stages import sync_stages

    model = get_step_context().model
    if model is None:  # the pipeline was configured without a ZenML Model
        return
    model.log_metadata(
        {
            "mlflow": {"registered_model": candidate.name, "version": int(candidate.version), "uri": candidate.uri},
            "test_metrics": numeric_leaves(test_metrics),
            "gate": {"decision": decision.tag, "reasons": list(decision.reasons)},
        }
    )
    try:
        Client().update_model_version(model.name, model.id, name=f"v{candidate.version}")
    except Exception as err:  # a name left by an older registry (a reset MLflow store): keep the number
        print(f"ZenML model version {model.version} keeps its name ({err})")
    changed = sync_stages(candidate.name, model.name)
    print(f"ZenML model {model.name}: {changed or 'stages unchanged'} (promoted: {promoted})")
