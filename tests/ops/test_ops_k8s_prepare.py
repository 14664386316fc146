"""k8s/prepare_run.py, the TrainJob/PyTorchJob entry point, run with the manifests' own arguments
against a real (sqlite) MLflow registry: the run config lands on the volume with the data on
/data, the teachers come from the registry once per run, and the command handed to torchrun is
one dtkd.launch accepts, with teacher files that exist."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from ops_helpers import REPO_ROOT
from test_ops_k8s_render import distill_commands

SCRIPT = REPO_ROOT / "k8s" / "prepare_run.py"


def _module():
    spec = importlib.util.spec_from_file_location("prepare_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _register(registry, name: str, seed: int):
    from dtkd import models

    torch.manual_seed(seed)
    model = models.build("x3d_tiny", 3, frames=4, crop_size=32)
    version = registry.register_candidate(model, registered_name=name, metrics={"top1": 0.5},
                                          dataset_fingerprint="hmdb51")
    registry.set_champion(name, version.version)
    return model


def _localised(cmd: list[str], root) -> list[str]:
    """The manifest's command with the image's /opt/dtkd as the checkout and /data under tmp."""
    return [a.replace("/opt/dtkd/", f"{REPO_ROOT}/").replace("/data/", f"{root}/data/") for a in cmd]


@pytest.mark.parametrize("index", [0, 2], ids=["pytorchjob-master", "trainjob"])
def test_manifest_arguments_prepare_a_run(index, tmp_path, tracking_uri, monkeypatch):
    from dtkd.config import load_config
    from dtkd.launch import parse_args, teacher_weights
    from dtkd_ops.registry import ModelRegistry

    registry = ModelRegistry(tracking_uri)
    teachers = {role: _register(registry, f"dtkd-teacher-hmdb51-{role}", seed)
                for seed, role in enumerate(["cnn", "vit"])}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    where, cmd, _, _ = distill_commands()[index]
    prepare_run = _module()
    args = prepare_run.parse_args(_localised(cmd, tmp_path)[2:])
    command = prepare_run.prepare(args)

    assert command[:3] == ["torchrun", "-m", "dtkd.launch"]
    launch = parse_args(command[3:])
    cfg = load_config(launch.config)
    assert str(cfg.data.root) == "/data/repo/data/hmdb51", "the pods read the data from the volume"
    weights = teacher_weights(launch.teacher)   # raises unless every file exists
    for role, path in weights.items():
        state = torch.load(path, weights_only=True)
        assert all(torch.equal(state[k], v) for k, v in teachers[role].state_dict().items())
        assert "dtkd-teacher-hmdb51-" + role in (args.run_dir / "teachers" / f"{role}.source").read_text()

    # A restarted pod (or another node) keeps the teachers this run started with, even after the
    # registry's champion moved on.
    _register(registry, "dtkd-teacher-hmdb51-cnn", seed=7)
    before = os.stat(weights["cnn"]).st_ino
    prepare_run.prepare(args)
    assert os.stat(weights["cnn"]).st_ino == before
    assert not [p for p in (args.run_dir / "teachers").iterdir() if p.name.startswith(".fetch-")]


def test_a_second_node_that_lost_the_race_keeps_the_winners_file(tmp_path, tracking_uri, monkeypatch):
    from dtkd_ops.registry import ModelRegistry

    _register(ModelRegistry(tracking_uri), "dtkd-teacher-hmdb51-cnn", seed=0)
    prepare_run = _module()
    winner = tmp_path / "run" / "teachers" / "cnn.pt"
    winner.parent.mkdir(parents=True)
    real_fetch = None

    def fetch_then_lose(uri, *, tracking_uri, cache_dir):   # another node links its file meanwhile
        path = real_fetch(uri, tracking_uri=tracking_uri, cache_dir=cache_dir)
        winner.write_bytes(b"the other node's teacher")
        return path

    import dtkd_ops.pretrained as pretrained

    real_fetch = pretrained.fetch_weights
    monkeypatch.setattr(pretrained, "fetch_weights", fetch_then_lose)
    assert prepare_run.fetch_teacher(tmp_path / "run", "cnn", "models:/dtkd-teacher-hmdb51-cnn@champion",
                                     tracking_uri) == winner
    assert winner.read_bytes() == b"the other node's teacher"
    assert [p.name for p in winner.parent.iterdir()] == ["cnn.pt"], "no stray fetch directory or file"


def test_refuses_what_it_cannot_do(tmp_path, monkeypatch):
    prepare_run = _module()
    with pytest.raises(SystemExit):
        prepare_run.parse_args(["--run-dir", str(tmp_path), "--config", "c.yaml", "--teacher", "cnn=/a/file.pt"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paper = str(REPO_ROOT / "configs" / "paper_hmdb51.yaml")
    args = prepare_run.parse_args(["--run-dir", str(tmp_path), "--config", paper,
                                   "--teacher", "cnn=models:/m@champion", "--", "true"])
    with pytest.raises(SystemExit, match="MLFLOW_TRACKING_URI"):
        prepare_run.prepare(args)
