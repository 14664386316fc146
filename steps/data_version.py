"""The DVC data version in ZenML: tags on runs and models, and the retraining decision."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step

from dtkd.data import DataConfig
from dtkd_ops.data_version import data_version
from dtkd_ops.registry import ModelRegistry
from dtkd_ops.home import REPO_ROOT
from steps.caching import NEVER_CACHED
from steps.stack import tracking_uri


def data_repo() -> Path:
    """The DVC project whose data version the pipeline records: this checkout, unless
    ``DTKD_DATA_REPO`` names another (a data repo shared by several training repos, or a test's)."""
    return Path(os.environ.get("DTKD_DATA_REPO", REPO_ROOT))


def data_paths(data: DataConfig) -> list[Path]:
    """The DVC outputs that make up a run's data: its videos and its clip store."""
    return [data.root] + ([data.store.dir] if data.store.enabled and data.store.dir is not None else [])


def current_data_tags(data: DataConfig) -> dict[str, str]:
    """`dtkd.data.dvc_hash` (of this config's data only) and `dtkd.data.git_rev` for MLflow runs,
    model versions and ZenML."""
    return data_version(data_repo(), paths=data_paths(data)).tags()


def code_commit() -> str:
    """The code's git commit, ``-dirty`` when tracked files differ from it ("none" outside git)."""
    import subprocess

    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    if rev is None:
        return "none"
    return f"{rev}-dirty" if git("status", "--porcelain", "--untracked-files=no") else rev


def lineage_tags(data: DataConfig) -> dict[str, str]:
    """What a run or model version came from: the data version (DVC) and the code commit, under
    MLflow's own source tag too, so the UI shows it."""
    commit = code_commit()
    return {**current_data_tags(data), "dtkd.code.git_commit": commit, "mlflow.source.git.commit": commit}


# Never cached: the decision is about the data and the champion as they are now.
@step(**NEVER_CACHED)
def check_data_version(registered_name: str, data: DataConfig, force: bool = False) -> Annotated[dict, "retrain_decision"]:
    """Retrain when the DVC data version differs from the one the current champion was trained
    on, when there is no champion, when the data is not tracked by DVC (nothing to compare), or
    when forced."""
    current = data_version(data_repo(), paths=data_paths(data))
    champion = ModelRegistry(tracking_uri()).get_champion(registered_name)
    trained_on = champion.tags.get("dtkd.data.dvc_hash") if champion else None
    if force:
        retrain, reason = True, "forced"
    elif current.dvc_hash is None:
        retrain, reason = True, "data is not tracked by DVC: cannot tell whether it changed"
    elif champion is None:
        retrain, reason = True, f"no champion of {registered_name} yet"
    elif trained_on != current.dvc_hash:
        retrain, reason = True, f"data changed: champion v{champion.version} saw {trained_on}, now {current.dvc_hash}"
    else:
        retrain, reason = False, f"data unchanged ({current.dvc_hash}) since champion v{champion.version}"
    decision = {"retrain": retrain, "reason": reason, "dvc_hash": current.dvc_hash, "champion_dvc_hash": trained_on}
    log_metadata(metadata=decision)
    return decision
