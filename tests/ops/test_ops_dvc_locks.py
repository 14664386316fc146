"""Every committed dvc.lock is current with the code its stages depend on.

A stage whose code dependency changed is stale for DVC: the first `make run` from a fresh clone
reruns it and rewrites the lock, which leaves `git status` dirty and every model version's
commit tag `-dirty` (issue "MLOps a platform team can trust"). Twice a change to dtkd/data or
dtkd_ops went in without its lock; this catches the next one in seconds: after such a change,
`make data CONFIG=configs/<name>.yaml` and commit `datasets/<name>/dvc.lock`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LOCKS = sorted(REPO.glob("datasets/*/dvc.lock"))


def _stale_code_deps(lock: Path) -> list[str]:
    stages = yaml.safe_load((lock.parent / "dvc.yaml").read_text())["stages"]
    stale = []
    for name, stage in yaml.safe_load(lock.read_text())["stages"].items():
        wdir = (lock.parent / stages[name].get("wdir", ".")).resolve()
        for dep in stage.get("deps", []):
            path = wdir / dep["path"]
            if path.is_file() and "md5" in dep and hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
    return stale


def test_the_shipped_configs_have_locks():
    assert {p.parent.name for p in LOCKS} >= {"default", "tiny"}


@pytest.mark.parametrize("lock", LOCKS, ids=[p.parent.name for p in LOCKS])
def test_committed_lock_matches_the_code_it_depends_on(lock):
    stale = _stale_code_deps(lock)
    assert not stale, (f"{lock.relative_to(REPO)} is stale for {stale}: run `make data CONFIG=configs/"
                       f"{lock.parent.name}.yaml` and commit the lock")
