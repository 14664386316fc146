"""Idempotent set-up of dtkd's local ZenML stack: local orchestrator and artifact store, an MLflow
experiment tracker and an MLflow model registry, both on one sqlite tracking store.

Run as ``python -m pipelines.stack`` (``make setup`` does). Paths come from the environment so that
tests can build a fully isolated home: ``ZENML_CONFIG_PATH`` (ZenML's store) and ``DTKD_HOME``
(MLflow's sqlite db and artifacts; default ``<repo>/.dtkd``).
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


def ensure_local_stack() -> str:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    if not (REPO_ROOT / ".zen").exists():
        Client.initialize(root=REPO_ROOT)
    client = Client()
    ensure_mlflow_experiment()

    wanted = {
        StackComponentType.EXPERIMENT_TRACKER: (TRACKER_NAME, "mlflow", {"tracking_uri": tracking_uri()}),
        StackComponentType.MODEL_REGISTRY: (MODEL_REGISTRY_NAME, "mlflow", {}),
    }
    components = {}
    for ctype, (name, flavor, conf) in wanted.items():
        existing = client.list_stack_components(type=ctype, name=name)
        if existing.items:
            comp = existing.items[0]
            if conf and comp.configuration.get("tracking_uri") != conf.get("tracking_uri"):
                client.update_stack_component(name, ctype, configuration=conf)
        else:
            client.create_stack_component(name=name, flavor=flavor, component_type=ctype, configuration=conf)
        components[ctype] = name

    default = client.get_stack("default")
    components[StackComponentType.ORCHESTRATOR] = default.components[StackComponentType.ORCHESTRATOR][0].name
    components[StackComponentType.ARTIFACT_STORE] = default.components[StackComponentType.ARTIFACT_STORE][0].name
    if not client.list_stacks(name=STACK_NAME).items:
        client.create_stack(name=STACK_NAME, components=components)
    client.activate_stack(STACK_NAME)
    return STACK_NAME


if __name__ == "__main__":
    name = ensure_local_stack()
    print(f"ZenML stack '{name}' active; MLflow tracking URI {tracking_uri()}")
