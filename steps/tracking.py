"""MLflow logging used by the steps: per-epoch curves, figures and flattened configs."""
from __future__ import annotations

from typing import Any, Mapping

import mlflow

from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

from dtkd.assemble import build_job
from dtkd.data import manifest_fingerprint
from dtkd_ops.home import EXPERIMENT_NAME
from steps.checkpoints import step_checkpoints

__all__ = ["TRACKED", "MlflowEpochLogger", "fit_and_test", "log_params_flat", "log_confusion_matrix", "flatten", "numeric_leaves"]

# Step options for every step that logs to MLflow: the experiment tracker of whatever stack is
# active (`True`: ZenML's compiler requires the stack to have one and the step launcher starts that
# one's run), not a component name. A name here had to match every stack's tracker: the local
# stack's `dtkd_mlflow_tracker`, the team and Kubernetes stacks' remote trackers; with one it did
# not, ZenML refused to compile. The experiment is the one `pipelines.stack` created
# (dtkd_ops.home.ensure_mlflow_experiment) with an absolute artifact location.
TRACKED = dict(
    experiment_tracker=True,
    settings={"experiment_tracker": MLFlowExperimentTrackerSettings(experiment_name=EXPERIMENT_NAME)},
)


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other objects become strings (MLflow params are scalars)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}{sep}", sep))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def numeric_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested dict as MLflow metrics: {"a": {"b": 1}} -> {"a/b": 1.0}."""
    return {k: float(v) for k, v in flatten(tree, prefix, "/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_params_flat(tree: Mapping[str, Any], prefix: str = "") -> None:
    mlflow.log_params({k: ("" if v is None else v) for k, v in flatten(tree, prefix).items()})


class MlflowEpochLogger:
    """Trainer callback: every epoch's numeric metrics as MLflow curves (step = epoch)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        numeric = {f"{self.prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if numeric:
            mlflow.log_metrics(numeric, step=epoch)


def log_confusion_matrix(confusion, class_names: list[str], artifact_file: str = "confusion_matrix.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(class_names), 1.0 + 0.6 * len(class_names)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def fit_and_test(stage, manifest, name: str, *, state_dict: Mapping[str, Any] | None = None):
    """Train a one-model stage as ``name`` (its config as MLflow params, its curves under
    ``name/``, checkpoints keyed by its config and data), then test it with the run's multi-view
    protocol (the trainer validates on one view) and log ``name/test_top1|top5``. With
    ``state_dict`` (weights already trained by this stage elsewhere: a shipped backbone) the model
    loads them, strictly, instead of training. Returns (job, {"top1", "top5"})."""
    stage_json = stage.model_dump(mode="json")
    log_params_flat({"model": stage_json["model"], "train": stage_json["train"]}, prefix=f"{name}.")
    job = build_job(stage, manifest)
    if state_dict is not None:
        job.model.load_state_dict(state_dict)
    else:
        with step_checkpoints(name, stage_json, manifest_fingerprint(manifest)) as directory:
            job.fit(callbacks=[MlflowEpochLogger(prefix=f"{name}/")], checkpoint_dir=directory)
    test = job.evaluate()
    metrics = {"top1": test.top1, "top5": test.top5, **test.heads}  # heads: a multi-head model's verb/noun/action
    mlflow.log_metrics({f"{name}/test_{k}": v for k, v in metrics.items()})
    return job, metrics
