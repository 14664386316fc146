"""Validate: the Great Expectations quality gate on the manifest and per-video probes."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
from zenml import log_metadata, step
from zenml.types import HTMLString

from dtkd.data import DataConfig, prepare_store
from dtkd_ops.quality import rules_for, run_quality_gate
from steps.materializers import ManifestMaterializer
from steps.tracking import TRACKED


# Cached on the manifest's content; its clean manifest carries a content hash on to the steps after.
@step(**TRACKED, output_materializers={"clean_manifest": ManifestMaterializer})
def validate_data(
    manifest: pd.DataFrame, data: DataConfig, min_frames: int
) -> tuple[Annotated[pd.DataFrame, "clean_manifest"], Annotated[HTMLString, "data_docs"]]:
    rules = rules_for(data, min_frames=min_frames)  # the same rules as the DVC quality stage
    with tempfile.TemporaryDirectory() as tmp:
        report = run_quality_gate(manifest, rules, docs_dir=Path(tmp) / "data_docs", data_root=data.root)
        mlflow.log_artifacts(str(report.docs_path), artifact_path="data_docs")
        html = HTMLString(report.index_html())
    mlflow.log_text(report.summary(), "quality_report.txt")
    if len(report.quarantined):
        mlflow.log_table(report.quarantined, "quarantined.json")
    log_metadata(metadata={"success": report.success, "quarantined": len(report.quarantined), "summary": report.summary()})
    report.raise_for_failure()  # the run stops here, with the readable report, when the data is bad
    # The pre-decoded clip store of the clean videos (reused when `dvc repro` already built it).
    store = prepare_store(data, report.clean_manifest)
    if store is not None:
        log_metadata(metadata={"clip_store": str(store.root), "clip_store_fingerprint": store.fingerprint})
    return report.clean_manifest, html
