"""The MLflow store of the active ZenML stack: the one place steps and pipelines learn it from."""
from __future__ import annotations

import os

from dtkd_ops import home

LOCK_SECRET, LOCK_KEY = "dtkd_mlflow", "lock_url"  # pipelines.team_stack stores the lock's URL there


def tracking_uri() -> str:
    """The tracking URI of the active stack's MLflow experiment tracker (the local stack's sqlite
    store, or the team stack's server), with the tracker's credentials put in the environment as
    ZenML does inside a step, so dtkd's own MLflow clients reach the same store as the steps'
    runs. Without an MLflow tracker on the stack: the local default (``dtkd_ops.home``)."""
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    if tracker is None or tracker.flavor != "mlflow":
        return home.tracking_uri()
    tracker.configure_mlflow()
    _use_stack_lock()
    return tracker.get_tracking_uri()


def _use_stack_lock() -> None:
    """``DTKD_LOCK_URL`` from the stack's secret, when it has one (the team stack): promotes into a
    shared registry take the shared lock (ModelRegistry.champion_lock)."""
    from zenml.client import Client

    if "DTKD_LOCK_URL" in os.environ:
        return
    try:
        secret = Client().get_secret(LOCK_SECRET)
    except KeyError:
        return
    url = secret.secret_values.get(LOCK_KEY)
    if url:
        os.environ["DTKD_LOCK_URL"] = url
