"""Ingest: generate (embedded synthetic set) or read a dataset and build its manifest."""
from __future__ import annotations

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.config import CachePolicy

from dtkd.data import DataConfig, prepare_manifest
from steps.data_version import current_data_tags, dvc_data_key


# Cache key = step code + data config + the DVC data version (see dvc_data_key).
@step(cache_policy=CachePolicy(cache_func=dvc_data_key))
def ingest_data(data: DataConfig) -> Annotated[pd.DataFrame, "manifest"]:
    manifest = prepare_manifest(data)
    log_metadata(
        metadata={
            "videos": len(manifest),
            "classes": int(manifest["label"].nunique()),
            "per_split": {k: int(v) for k, v in manifest["split"].value_counts().items()},
            "root": str(data.root),
            **current_data_tags(),
        }
    )
    return manifest
