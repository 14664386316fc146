"""A manifest's identity is its content: ZenML caches the steps downstream of ingest on it.

ZenML keys a step's cache on its input artifacts' content hashes when their materializer gives
one (``CachePolicy.include_artifact_values``, on by default), else on the artifact ids. A
manifest carries every file's sha256 (``dtkd.data.manifest``), so hashing the table hashes the
data: an ingest that finds the same files gives the same key (the teachers and the student stay
cached), and new bytes under the same names give a new one (they retrain, never resume stale).
"""
from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Optional

import pandas as pd
from zenml.integrations.pandas.materializers.pandas_materializer import PandasMaterializer


def frame_digest(df: pd.DataFrame) -> str:
    """sha256 over a table's column names, dtypes and every cell (row order included)."""
    h = hashlib.sha256()
    h.update(repr([(str(c), str(t)) for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())
    return h.hexdigest()


class ManifestMaterializer(PandasMaterializer):
    """Stores a manifest as ZenML's pandas materializer does, with a content hash."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (pd.DataFrame,)

    def compute_content_hash(self, data: Any) -> Optional[str]:
        return frame_digest(data) if isinstance(data, pd.DataFrame) else None
