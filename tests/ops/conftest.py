"""Fixtures for the dtkd_ops tests: isolated homes, telemetry off, copies of a tiny real dataset."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

for _k, _v in {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}.items():
    os.environ.setdefault(_k, _v)

from ops_helpers import CLASSES, make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def base_dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("videos")
    return root, make_dataset(root)


@pytest.fixture
def dataset(base_dataset, tmp_path) -> tuple[Path, pd.DataFrame]:
    """A private copy of the clean dataset that a test may corrupt."""
    src, manifest = base_dataset
    root = tmp_path / "videos"
    shutil.copytree(src, root)
    manifest = manifest.copy()
    manifest["path"] = [str(root / Path(p).relative_to(src)) for p in manifest["path"]]
    return root, manifest


@pytest.fixture
def quality_rules():
    from dtkd_ops.quality import QualityRules

    return QualityRules(expected_labels=CLASSES, min_frames=8, min_fps=4, max_fps=60, min_width=32,
                        min_height=32, min_duration_s=1.0, max_class_imbalance=2.0,
                        max_quarantine_fraction=0.1)


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path, monkeypatch):
    """No test may fall back to MLflow's default store (./mlflow.db or ./mlruns in the checkout):
    the default URI points into the test's tmp dir, and the global URIs are restored afterwards."""
    import mlflow

    default_uri = f"sqlite:///{tmp_path / 'default-mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", default_uri)
    # mlflow.set_registry_uri writes MLFLOW_REGISTRY_URI into os.environ; registering it with
    # monkeypatch makes the undo remove it, so no later test (or its subprocesses) inherits it.
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", default_uri)
    monkeypatch.setenv("DTKD_HOME", str(tmp_path / "dtkd-home"))
    monkeypatch.chdir(tmp_path)
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


@pytest.fixture(scope="session")
def _mlflow_db_template(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow sqlite store. Creating one runs MLflow's ~50 alembic
    migrations (5-7 s here); tests copy this file instead."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path, _mlflow_db_template) -> str:
    """A fresh sqlite tracking store + registry for one test (artifacts next to it)."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copy(_mlflow_db_template, db)
    return f"sqlite:///{db}"
