"""Validate: the Great Expectations quality gate on the manifest and per-video probes."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
from zenml import log_metadata, step
from zenml.types import HTMLString

from dtkd.data import DataConfig, manifest_fingerprint, prepare_store
from dtkd_ops.quality import rules_for, run_quality_gate
from steps.data_version import lineage_tags
from steps.materializers import ManifestMaterializer
from steps.tracking import TRACKED

DATA_DOCS = "data_docs"  # MLflow artifact folder of the browsable GX Data Docs site


def log_dataset(manifest: pd.DataFrame, data: DataConfig, context: str) -> None:
    """``mlflow.log_input``: the dataset's source (its root), its content digest (the manifest
    fingerprint, which covers every file's sha256) and its rows, on the step's MLflow run."""
    dataset = mlflow.data.from_pandas(manifest, source=str(Path(data.root).resolve()), name=Path(data.root).name,
                                      digest=manifest_fingerprint(manifest)[:36])
    mlflow.log_input(dataset, context=context)


# Cached on the manifest's content; its clean manifest carries a content hash on to the steps after.
@step(**TRACKED, output_materializers={"clean_manifest": ManifestMaterializer})
def validate_data(
    manifest: pd.DataFrame, data: DataConfig, min_frames: int
) -> tuple[Annotated[pd.DataFrame, "clean_manifest"], Annotated[HTMLString, "data_docs"]]:
    rules = rules_for(data, min_frames=min_frames)  # the same rules as the DVC quality stage
    mlflow.set_tags(lineage_tags(data))
    with tempfile.TemporaryDirectory() as tmp:
        report = run_quality_gate(manifest, rules, docs_dir=Path(tmp) / DATA_DOCS, data_root=data.root)
        # the whole site (index.html is one page of it), so it browses from MLflow's artifact store
        mlflow.log_artifacts(str(Path(report.docs_path).parent), artifact_path=DATA_DOCS)
        html = HTMLString(report.index_html())
        report.docs_path = None  # the temporary copy is gone: the summary names the MLflow copy below
    docs_uri = f"{mlflow.get_artifact_uri(DATA_DOCS)}/index.html"
    mlflow.log_text(report.summary(), "quality_report.txt")
    if len(report.quarantined):
        mlflow.log_table(report.quarantined, "quarantined.json")
    log_metadata(metadata={"success": report.success, "quarantined": len(report.quarantined),
                           "summary": report.summary(), "data_docs": docs_uri})
    print(f"data quality gate: {'PASSED' if report.success else 'FAILED'}, {report.n_videos} videos, "
          f"{len(report.quarantined)} quarantined; Data Docs: {docs_uri}")
    report.raise_for_failure()  # the run stops here, with the readable report, when the data is bad
    log_dataset(report.clean_manifest, data, context="validated")
    # The pre-decoded clip store of the clean videos (reused when `dvc repro` already built it).
    store = prepare_store(data, report.clean_manifest)
    if store is not None:
        log_metadata(metadata={"clip_store": str(store.root), "clip_store_fingerprint": store.fingerprint})
    return report.clean_manifest, html
