"""DVC data versioning with a real DVC repo in a temp dir: git init + dvc init + a local remote."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from ops_helpers import REPO_ROOT, write_video
from dtkd_ops.data_version import (DataVersionError, add_local_remote, data_version, dvc,
                                   tracked_outs)

GIT_ENV = {"GIT_AUTHOR_NAME": "dtkd-test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "dtkd-test", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture
def dvc_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    add_local_remote(repo, tmp_path / "remote")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "dvc init")
    return repo


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_add_push_drop_cache_pull_gives_the_same_version(dvc_repo, tmp_path):
    videos = dvc_repo / "data" / "videos"
    for i in range(3):
        write_video(videos / "wave" / f"wave_{i}.avi", seed=i)
    before = _files(videos)

    assert data_version(dvc_repo).dvc_hash is None  # nothing tracked yet

    dvc(dvc_repo, "add", "data/videos")
    git(dvc_repo, "add", "-A")
    git(dvc_repo, "commit", "-q", "-m", "track videos")
    v1 = data_version(dvc_repo)
    assert v1.dvc_hash and list(v1.outs) == ["data/videos"] and v1.outs["data/videos"].endswith(".dir")
    assert v1.git_rev == git(dvc_repo, "rev-parse", "HEAD")

    dvc(dvc_repo, "push")
    assert any((tmp_path / "remote").rglob("*")), "nothing reached the remote"
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    shutil.rmtree(videos)
    dvc(dvc_repo, "pull")
    assert _files(videos) == before, "pulled bytes differ"
    assert data_version(dvc_repo).dvc_hash == v1.dvc_hash

    # one changed video -> a new version; the old one is still in the remote
    write_video(videos / "wave" / "wave_0.avi", seed=99)
    dvc(dvc_repo, "add", "data/videos")
    v2 = data_version(dvc_repo)
    assert v2.dvc_hash != v1.dvc_hash
    assert v2.git_rev.endswith("-dirty"), "the .dvc file changed since HEAD"
    assert v2.tags() == {"dtkd.data.dvc_hash": v2.dvc_hash, "dtkd.data.git_rev": v2.git_rev}


def test_pipeline_outputs_version_ignores_reports(dvc_repo):
    (dvc_repo / "src.txt").write_text("a\nb\n")
    (dvc_repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": {
        "cmd": "mkdir -p out && cp src.txt out/data.txt && date +%s%N > report.txt && date +%s%N > log.txt",
        "deps": ["src.txt"],
        "outs": ["out", {"report.txt": {"cache": False}}, {"log.txt": {"type": "report"}}],
    }}}))
    with pytest.raises(DataVersionError, match="no recorded hash"):
        data_version(dvc_repo, strict=True)
    assert data_version(dvc_repo).dvc_hash is None
    dvc(dvc_repo, "repro")
    v1 = data_version(dvc_repo)
    assert list(v1.outs) == ["out"], v1.outs  # the uncached report is not data
    assert {"report.txt", "log.txt"} <= set(tracked_outs(dvc_repo, include_reports=True))
    dvc(dvc_repo, "repro", "--force")  # new report timestamp, same data
    assert data_version(dvc_repo).dvc_hash == v1.dvc_hash
    assert data_version(dvc_repo, stages=["copy"]).dvc_hash == v1.dvc_hash
    with pytest.raises(DataVersionError, match=r"no stage\(s\) \['train'\]"):
        data_version(dvc_repo, stages=["train"])


def test_not_a_dvc_project(tmp_path):
    assert data_version(tmp_path).dvc_hash is None
    with pytest.raises(DataVersionError, match="not a DVC project"):
        data_version(tmp_path, strict=True)
    with pytest.raises(DataVersionError, match="failed"):
        dvc(tmp_path, "status")


@pytest.mark.slow
def test_repo_dvc_yaml_reproduces_pushes_and_pulls(tmp_path):
    """The repository's own dvc.yaml (generate -> manifest -> quality -> store) on a small
    synthetic set, in a throwaway git+DVC repo that links dtkd's sources."""
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "data.yaml").read_text())
    cfg["data"]["synthetic"].update(num_classes=2, clips_per_class={"train": 3, "val": 1, "test": 2})
    cfg["pretraining"]["synthetic"].update(num_classes=3, clips_per_class={"train": 2, "val": 1, "test": 1})
    (repo / "configs" / "data.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for pkg in ("dtkd", "dtkd_ops"):
        os.symlink(REPO_ROOT / pkg, repo / pkg)
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text("__pycache__/\n")
    dvc(repo, "init", "-q")
    add_local_remote(repo, tmp_path / "remote")

    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{old_path}"  # `python` in stage cmds
    try:
        dvc(repo, "repro")
        v1 = data_version(repo, strict=True)
        assert set(v1.outs) == {"data/synthetic", "data/manifest.parquet", "data/quality/clean_manifest.parquet",
                                "data/quality/quarantine.csv", "data/store", "data/pretrain"}
        assert len(list((repo / "data" / "pretrain").rglob("*.avi"))) == 12  # the pretraining corpus
        report = yaml.safe_load((repo / "data" / "quality" / "report.json").read_text())
        assert report["success"] and report["n_videos"] == 12
        assert "data/quality/report.json" in dvc(repo, "metrics", "show").stdout
        assert "up to date" in dvc(repo, "status").stdout.lower()

        dvc(repo, "push")
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(repo / "data")
        dvc(repo, "pull")
        assert data_version(repo, strict=True).dvc_hash == v1.dvc_hash
        assert "up to date" in dvc(repo, "status").stdout.lower()

        # a data knob changes the version
        cfg["data"]["synthetic"]["seed"] = 1
        (repo / "configs" / "data.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        assert "data.synthetic" in dvc(repo, "status").stdout
        dvc(repo, "repro")
        assert data_version(repo, strict=True).dvc_hash != v1.dvc_hash
    finally:
        os.environ["PATH"] = old_path
