"""Small file helpers shared by dtkd_ops: atomic writes and YAML loading with clear errors."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dtkd.config_io import format_validation_error  # noqa: F401  (re-exported for dtkd_ops)
from dtkd.config_io import read_yaml
from dtkd.fsutil import atomic_write_bytes


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def load_yaml_mapping(path: str | Path, *, section: str | None = None) -> dict:
    """Load a YAML file that must hold a mapping (optionally the mapping under ``section``).
    Errors name the file and, where relevant, the section."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    if section is not None:
        if section not in raw:
            raise ValueError(f"{path}: section '{section}' is missing (top-level keys: {sorted(raw)})")
        raw = raw[section]
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: '{section}' must be a mapping, got {type(raw).__name__}")
    return raw


def write_manifest(manifest, path: str | Path, *, base: str | Path = ".") -> Path:
    """Atomically write a manifest DataFrame as parquet with its paths relative to ``base``, so
    the file (a DVC output) hashes the same in any checkout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = manifest.copy()
    out["path"] = [os.path.relpath(os.path.abspath(p), os.path.abspath(base)) for p in out["path"].astype(str)]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        out.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(path: str | Path, *, base: str | Path = "."):
    """A manifest file (.parquet, or .csv) with relative paths made absolute against ``base``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    if "path" not in df.columns:
        raise ValueError(f"{path}: manifest has no 'path' column (columns: {list(df.columns)})")
    df["path"] = [p if os.path.isabs(p) else os.path.abspath(os.path.join(base, p)) for p in df["path"].astype(str)]
    return df
