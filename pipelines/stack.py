"""Idempotent set-up of dtkd's local ZenML stack: local orchestrator and artifact store, an MLflow
experiment tracker and an MLflow model registry, both on one sqlite tracking store.

Run as ``python -m pipelines.stack`` (``make setup`` does). Paths come from the environment so that
tests can build a fully isolated home: ``ZENML_CONFIG_PATH`` (ZenML's store) and ``DTKD_HOME``
(MLflow's sqlite db and artifacts; default ``<repo>/.dtkd``).
"""
from __future__ import annotations

from dtkd_ops.home import (EXPERIMENT_NAME, MODEL_REGISTRY_NAME, REPO_ROOT, STACK_NAME, TRACKER_NAME,
                           ensure_mlflow_experiment, tracking_uri)

__all__ = ["STACK_NAME", "TRACKER_NAME", "MODEL_REGISTRY_NAME", "EXPERIMENT_NAME", "ensure_local_stack"]


def ensure_local_stack() -> str:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    if not (REPO_ROOT / ".zen").exists():
        Client.initialize(root=REPO_ROOT)
    client = Client()
    if client.zen_store.type.value == "rest":  # logged in to a ZenML server (make team-up): its stack rules
        return client.active_stack_model.name
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
    if name == STACK_NAME:
        print(f"ZenML stack '{name}' active; MLflow tracking URI {tracking_uri()}")
    else:
        print(f"connected to a ZenML server: its stack '{name}' stays active (make team-down returns to '{STACK_NAME}')")
