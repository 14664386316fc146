"""The team stack on this machine: PostgreSQL, an MLflow tracking server on it, a ZenML server, and
a ZenML stack ``dtkd_team`` that uses them.

    python -m pipelines.team_stack up       # make team-up
    python -m pipelines.team_stack down     # make team-down
    python -m pipelines.team_stack status

``up`` starts the servers of :mod:`dtkd_ops.services` (PostgreSQL, MLflow with basic auth and a
proxied artifact store), then a local ZenML server (``zenml login --local``: ZenML's own server,
`zenml[server]`, a daemon on 127.0.0.1), connects this client to it, stores the MLflow credentials
as a ZenML secret and registers the stack: the MLflow experiment tracker and model registry on the
tracking server (credentials by secret reference), the local orchestrator and artifact store.
Pipelines, `dtkd gate` and `dtkd promote` then talk to the servers over HTTP, exactly as a team's
would (``python -m dtkd_ops.services env`` prints the variables a CLI needs). ``down`` stops
everything and the client falls back to its local store. For a laptop, ``docker-compose.team.yaml``
starts the same services as containers (docs/mlops.md, "Team stack").
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from dtkd_ops import services
from dtkd_ops.home import EXPERIMENT_NAME, MODEL_REGISTRY_NAME, TRACKER_NAME
from steps.stack import LOCK_SECRET as SECRET_NAME

STACK_NAME = "dtkd_team"


def _zenml(*args: str) -> str:
    cmd = [str(Path(sys.executable).parent / "zenml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ZENML_ANALYTICS_OPT_IN": "false"})
    if proc.returncode != 0:
        raise services.ServiceError(f"`zenml {' '.join(args)}` failed (exit {proc.returncode}):\n"
                                    f"{(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


def zenml_server_up(port: int) -> None:
    """ZenML's local server (a daemon), this client logged in to it."""
    _zenml("login", "--local", "--port", str(port))


def register_stack(env: dict[str, str]) -> str:
    """Secret, components and stack on the ZenML server (idempotent: updated when present)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    # the lock's URL too: steps take the shared champion lock from it (steps/stack.py)
    values = {"username": env["MLFLOW_TRACKING_USERNAME"], "password": env["MLFLOW_TRACKING_PASSWORD"],
              "lock_url": env["DTKD_LOCK_URL"]}
    if client.list_secrets(name=SECRET_NAME).items:
        client.update_secret(SECRET_NAME, add_or_update_values=values)
    else:
        client.create_secret(SECRET_NAME, values=values)
    tracker_conf = {"tracking_uri": env["MLFLOW_TRACKING_URI"],
                    "tracking_username": f"{{{{{SECRET_NAME}.username}}}}",
                    "tracking_password": f"{{{{{SECRET_NAME}.password}}}}"}
    wanted = {
        # the same component names as the local stack: a step's `experiment_tracker=` finds it on either
        StackComponentType.EXPERIMENT_TRACKER: (TRACKER_NAME, "mlflow", tracker_conf),
        StackComponentType.MODEL_REGISTRY: (MODEL_REGISTRY_NAME, "mlflow", {}),
    }
    components = {}
    for ctype, (name, flavor, conf) in wanted.items():
        if client.list_stack_components(type=ctype, name=name).items:
            client.update_stack_component(name, ctype, configuration=conf)
        else:
            client.create_stack_component(name=name, flavor=flavor, component_type=ctype, configuration=conf)
        components[ctype] = name
    default = client.get_stack("default")
    for ctype in (StackComponentType.ORCHESTRATOR, StackComponentType.ARTIFACT_STORE):
        components[ctype] = default.components[ctype][0].name
    if not client.list_stacks(name=STACK_NAME).items:
        client.create_stack(name=STACK_NAME, components=components)
    client.activate_stack(STACK_NAME)
    return STACK_NAME


def up(zenml_port: Optional[int] = None) -> dict[str, str]:
    env = services.up()
    state = services.load_state(services.TeamPaths.default())
    port = zenml_port or state.get("zenml_port") or services.free_port()
    zenml_server_up(port)
    os.environ.update(env)  # the MLflow clients of this process (experiment creation below)
    register_stack(env)
    import mlflow

    if mlflow.MlflowClient().get_experiment_by_name(EXPERIMENT_NAME) is None:
        mlflow.MlflowClient().create_experiment(EXPERIMENT_NAME)  # artifacts proxied by the server
    return {**env, "ZENML_SERVER": f"http://127.0.0.1:{port}"}


def down() -> None:
    try:
        _zenml("logout", "--local")
    finally:
        services.down()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.team_stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            env = up()
            print(f"ZenML server {env['ZENML_SERVER']}, MLflow server {env['MLFLOW_TRACKING_URI']}; "
                  f"stack '{STACK_NAME}' active. For the CLI: eval \"$(python -m dtkd_ops.services env)\"")
        elif args.command == "down":
            down()
            print("team stack stopped; the ZenML client is back on its local store")
        else:
            print(services.status(), _zenml("status").strip().splitlines()[:6])
    except services.ServiceError as err:
        print(f"pipelines.team_stack {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
