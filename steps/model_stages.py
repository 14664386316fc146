"""ZenML's model stages mirror MLflow's aliases: one champion pointer, MLflow's.

Command line: ``python -m pipelines.model_stages sync|rollback`` (``make rollback``).

The MLflow registry's ``champion`` alias is the pointer of record (moved only by the gate's
compare-and-set, or by a rollback). Each ZenML model version that registered an MLflow version
(``register_student`` names it ``v<N>`` after it and records ``mlflow.version``) gets the stage
its MLflow version's alias says: champion -> production, challenger -> staging, neither ->
archived (when it had a stage). Run after every registration (the step does) and every rollback
(this module's ``rollback`` does), so the two registries never name different production models.
"""
from __future__ import annotations

from typing import Optional

from zenml.client import Client
from zenml.enums import ModelStages

from dtkd_ops.registry import CHAMPION, CHALLENGER, ModelRegistry

STAGE_OF_ALIAS = {CHAMPION: ModelStages.PRODUCTION, CHALLENGER: ModelStages.STAGING}


def mlflow_version_of(zenml_version) -> Optional[int]:
    link = (zenml_version.run_metadata or {}).get("mlflow")
    return int(link["version"]) if isinstance(link, dict) and "version" in link else None


def wanted_stages(registered_name: str, tracking_uri: Optional[str] = None) -> dict[int, ModelStages]:
    """MLflow version -> the ZenML stage its aliases call for (champion wins over challenger)."""
    registry = ModelRegistry(tracking_uri)
    wanted: dict[int, ModelStages] = {}
    for alias in (CHALLENGER, CHAMPION):  # champion last: it wins when one version has both
        ref = registry.get_alias(registered_name, alias)
        if ref is not None:
            wanted[int(ref.version)] = STAGE_OF_ALIAS[alias]
    return wanted


def sync_stages(registered_name: str, zenml_model: str, *, tracking_uri: Optional[str] = None) -> dict[str, str]:
    """Set every linked ZenML model version's stage from the MLflow aliases; returns
    ``{zenml version name: stage}`` of the versions it changed."""
    client = Client()
    wanted = wanted_stages(registered_name, tracking_uri)
    changed: dict[str, str] = {}
    versions = client.list_model_versions(model_name_or_id=zenml_model, size=1000).items
    # archive first, then set: ZenML allows one version per stage (`force` archives the holder)
    ordered = sorted(versions, key=lambda v: mlflow_version_of(v) in wanted)
    for version in ordered:
        number = mlflow_version_of(version)
        if number is None:
            continue
        target = wanted.get(number, ModelStages.ARCHIVED if version.stage else None)
        if target is not None and version.stage != target:
            client.update_model_version(zenml_model, version.id, stage=target, force=True)
            changed[version.name] = target.value
    return changed
