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


def _run_config(path, *, root, classes, seed=0):
    """A small run config of the embedded kind: its own data root, a small pretraining corpus."""
    config = {"data": {"root": f"data/{root}/videos",
                       "synthetic": {"num_classes": classes, "clips_per_class": {"train": 3, "val": 1, "test": 2},
                                     "frames": 8, "size": 32, "seed": seed},
                       "store": {"enabled": True, "dir": f"data/{root}/store"}},
              "models": {"student": {"name": "x3d_tiny", "frames": 4, "sampling_rate": 2, "crop_size": 32},
                         "cnn_teacher": {"name": "x3d_tiny_m", "frames": 4, "sampling_rate": 2, "crop_size": 32},
                         "vit_teacher": {"name": "mvit_tiny", "frames": 4, "sampling_rate": 2, "crop_size": 32}},
              "pretraining": {"roles": ["cnn"], "data": {"root": f"data/{root}/pretrain", "synthetic": {
                  "num_classes": 3, "clips_per_class": {"train": 2, "val": 1, "test": 1}, "frames": 8}}}}
    path.write_text(yaml.safe_dump({"enable_cache": True, "parameters": {"config": config}}, sort_keys=False))


def _derive(repo, config) -> str:
    proc = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "dtkd_ops.dvc_stages", config],
                          cwd=repo, check=True, capture_output=True, text=True)
    return proc.stdout.strip()


@pytest.mark.slow
def test_derived_stages_reproduce_push_and_pull_into_a_second_clone_byte_for_byte(tmp_path):
    """The DVC pipeline derived from a run config (dtkd_ops.dvc_stages), in a throwaway git+DVC
    repo that links dtkd's sources: reproduce, commit, push; a second clone pointed at the same
    remote pulls the same bytes; nothing of another config's data runs; both trees stay clean."""
    origin = tmp_path / "origin"
    (origin / "configs").mkdir(parents=True)
    for pkg in ("dtkd", "dtkd_ops"):
        os.symlink(REPO_ROOT / pkg, origin / pkg)
    _run_config(origin / "configs" / "small.yaml", root="small", classes=2)
    _run_config(origin / "configs" / "other.yaml", root="other", classes=3)
    git(origin, "init", "-q")
    (origin / ".gitignore").write_text("__pycache__/\n/data/\n")
    dvc(origin, "init", "-q")
    add_local_remote(origin, tmp_path / "remote")  # in .dvc/config: a clone points at the same remote

    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{old_path}"  # `python` in stage cmds
    try:
        small = _derive(origin, "configs/small.yaml")
        assert small == "datasets/small/dvc.yaml"
        _derive(origin, "configs/other.yaml")
        dvc(origin, "repro", small)
        v1 = data_version(origin, paths=["data/small/videos", "data/small/store"], strict=True)
        assert set(v1.outs) == {"data/small/videos", "data/small/store"}
        assert not (origin / "data" / "other").exists()  # only the config's own stages ran
        assert len(list((origin / "data" / "small" / "pretrain").rglob("*.avi"))) == 12  # the corpus
        report = yaml.safe_load((origin / "data" / "small" / "quality" / "report" / "report.json").read_text())
        assert report["success"] and report["n_videos"] == 12
        dvc(origin, "push", small)
        git(origin, "add", "-A")
        git(origin, "commit", "-q", "-m", "data")
        dvc(origin, "repro", small)  # a second repro changes nothing: the lock is a function of the data
        assert git(origin, "status", "--porcelain") == ""
        assert not data_version(origin, paths=["data/small/videos"]).git_rev.endswith("-dirty")

        clone = tmp_path / "clone"
        git(tmp_path, "clone", "-q", str(origin), str(clone))
        dvc(clone, "pull", small)
        for sub in ("videos", "store", "pretrain", "manifest.parquet", "quality/clean_manifest.parquet"):
            src, dst = origin / "data" / "small" / sub, clone / "data" / "small" / sub
            assert (_files(dst) if dst.is_dir() else dst.read_bytes()) == (_files(src) if src.is_dir() else src.read_bytes()), sub
        assert "up to date" in dvc(clone, "status", small).stdout.lower()
        assert git(clone, "status", "--porcelain") == ""
        assert data_version(clone, paths=["data/small/videos", "data/small/store"]).dvc_hash == v1.dvc_hash

        # a data knob in the run config changes the derived params, the stages and the version
        _run_config(origin / "configs" / "small.yaml", root="small", classes=2, seed=1)
        assert _derive(origin, "configs/small.yaml") == small
        assert "data.synthetic" in dvc(origin, "status", small).stdout
        dvc(origin, "repro", small)
        assert data_version(origin, paths=["data/small/videos"]).dvc_hash != v1.dvc_hash
    finally:
        os.environ["PATH"] = old_path
