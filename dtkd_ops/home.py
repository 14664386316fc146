"""Where dtkd keeps its state on this machine, and the names of the local stack's MLflow parts.

``DTKD_HOME`` (default ``<repo>/.dtkd``) holds the MLflow sqlite db and artifacts and the
training checkpoints. The ZenML stack that uses these (``pipelines.stack``) and the steps that log
to them both read them from here, so neither imports the other.
"""
from __future__ import annotations

import os
from pathlib import Path

STACK_NAME = "dtkd_local"
TRACKER_NAME = "dtkd_mlflow_tracker"
MODEL_REGISTRY_NAME = "dtkd_mlflow_registry"
EXPERIMENT_NAME = "dtkd"
REPO_ROOT = Path(__file__).resolve().parent.parent


def dtkd_home() -> Path:
    return Path(os.environ.get("DTKD_HOME", REPO_ROOT / ".dtkd")).resolve()


def tracking_uri() -> str:
    return f"sqlite:///{dtkd_home() / 'mlflow' / 'mlflow.db'}"


def artifact_root() -> str:
    return (dtkd_home() / "mlflow" / "artifacts").as_uri()


def ensure_mlflow_experiment() -> None:
    """Create the experiment with an absolute artifact location, so that runs started from any
    working directory store their artifacts in the same place (MLflow's default is ./mlruns)."""
    import mlflow

    (dtkd_home() / "mlflow").mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    if client.get_experiment_by_name(EXPERIMENT_NAME) is None:
        client.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_root())


