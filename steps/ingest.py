"""Ingest: generate (embedded synthetic set) or read a dataset and build its manifest."""
from __future__ import annotations

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from dtkd.data import DataConfig, manifest_fingerprint, prepare_manifest
from steps.caching import NEVER_CACHED
from steps.data_version import lineage_tags
from steps.materializers import ManifestMaterializer


# Never cached: it reads the data as it is now (every file probed and hashed), so a changed video
# is seen even when its name, the config and the DVC version are not. The steps after it are
# cached on the manifest's content (steps.materializers), so unchanged data retrains nothing.
@step(**NEVER_CACHED, output_materializers=ManifestMaterializer)
def ingest_data(data: DataConfig) -> Annotated[pd.DataFrame, "manifest"]:
    manifest = prepare_manifest(data)
    log_metadata(
        metadata={
            "videos": len(manifest),
            "classes": int(manifest["label"].nunique()),
            "per_split": {k: int(v) for k, v in manifest["split"].value_counts().items()},
            "root": str(data.root),
            "fingerprint": manifest_fingerprint(manifest),
            **lineage_tags(data),
        }
    )
    return manifest
