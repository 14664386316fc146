"""The ZenML Kubernetes run config and the one way to schedule, validated offline.

The manifests themselves (every overlay, the TrainJob/PyTorchJob against the upstream CRDs) are in
test_ops_k8s_render.py; what ZenML compiles from this run config is in test_ops_k8s_zenml.py. The
overlay is validated here against ZenML's own settings models."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ops_helpers import REPO_ROOT
from dtkd_ops.runconfig import deep_merge, main as runconfig_main, merge_files

K8S = REPO_ROOT / "k8s"
GPU = "nvidia.com/gpu"


def _strict(doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_cli_validator_agrees(tmp_path):
    """The console script, as a cluster admin would run it, on what `kubectl apply -k` applies."""
    from k8s_support import _render

    exe = Path(REPO_ROOT / ".venv" / "bin" / "kubernetes-validate")
    if not exe.exists():
        pytest.skip("kubernetes-validate console script not installed in .venv")
    files = []
    for overlay in ("local", "cloud"):
        files.append(tmp_path / f"{overlay}.yaml")
        files[-1].write_text(_render(str(K8S / "overlays" / overlay)))
    proc = subprocess.run([str(exe), "--strict", "--quiet", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_way_to_schedule_the_retraining_pipeline():
    """ZenML's `schedule:` (the Kubernetes orchestrator makes the CronJob) is the only schedule:
    no hand-written CronJob beside it, and what it schedules is the retraining pipeline."""
    assert not list(K8S.glob("cronjob*.yaml"))
    overlay = merge_files([REPO_ROOT / "configs" / "retrain-schedule.yaml"])
    assert len(overlay["schedule"]["cron_expression"].split()) == 5
    source = (REPO_ROOT / "pipelines" / "schedule.py").read_text()
    assert "from pipelines.retraining import retraining_pipeline" in source
    assert re.search(r"\btraining_pipeline\b", source) is None  # never the training pipeline itself


def test_zenml_overlay_validates_against_zenml_settings():
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings

    overlay = merge_files([K8S / "zenml-run-k8s.yaml"])
    assert not any(k.startswith("x-") for k in overlay)
    PipelineRunConfiguration.model_validate(overlay)
    base = KubernetesOrchestratorSettings.model_validate(overlay["settings"]["orchestrator.kubernetes"])
    assert GPU not in base.pod_settings.resources.get("limits", {}), "CPU steps must not hold a GPU"
    assert overlay["settings"]["docker"]["install_stack_requirements"] is False

    pipeline_src = (REPO_ROOT / "pipelines" / "training.py").read_text()
    gpu_steps = ["train_cnn_teacher", "train_vit_teacher", "distill_student"]
    assert set(overlay["steps"]) == set(gpu_steps)
    for step in gpu_steps:
        assert f"linked({step})(" in pipeline_src, f"{step} is not a step of the training pipeline"
        s = KubernetesOrchestratorSettings.model_validate(overlay["steps"][step]["settings"]["orchestrator.kubernetes"])
        assert s.pod_settings.resources["limits"][GPU] == "1"
        assert {m["mountPath"] for m in s.pod_settings.volume_mounts} == {"/data", "/dev/shm", "/tmp"}
    env = {e["name"]: e["value"] for e in base.pod_settings.env}
    assert env["DTKD_HOME"].startswith("/data/") and env["TORCH_HOME"].startswith("/data/")
    data_root = merge_files([K8S / "zenml-run-k8s.yaml"])["parameters"]["config"]["data"]["root"]
    assert data_root.startswith(env["DTKD_DATA_REPO"] + "/"), "the data lives in the DVC project that versions it"
    assert env["HOME"] == "/tmp", "read-only root filesystem: caches and configs go to the /tmp emptyDir"


def test_overlay_puts_every_path_on_the_data_volume(tmp_path):
    """Merged over the paper's HMDB51 config: data root and clip store on /data, the rest of the
    dtkd config untouched; DTKD_HOME (checkpoints, the teacher logit cache inside them,
    pretrained weights) is on /data through the pods' env (previous test)."""
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    from dtkd.config import load_config

    paper = REPO_ROOT / "configs" / "paper_hmdb51.yaml"
    out = tmp_path / "run.yaml"
    assert runconfig_main([str(paper), str(K8S / "zenml-run-k8s.yaml"), "-o", str(out)]) == 0
    merged = yaml.safe_load(out.read_text())
    PipelineRunConfiguration.model_validate(merged)
    cfg, original = load_config(out), load_config(paper)
    assert str(cfg.data.root) == "/data/repo/data/hmdb51" and str(cfg.data.store.dir) == "/data/repo/data/hmdb51_store"
    assert cfg.data.store.enabled and cfg.data.store.short_side == original.data.store.short_side
    same = lambda c: c.model_dump(exclude={"data"})  # noqa: E731
    assert same(cfg) == same(original)
    assert "orchestrator.kubernetes" in merged["settings"]


def test_deep_merge_and_stack_script():
    assert deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"c": 3}, "l": [2]}) == {"a": {"b": 1, "c": 3}, "l": [2]}
    proc = subprocess.run(["bash", "-n", str(K8S / "zenml-stack.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert runconfig_main([str(K8S / "missing.yaml")]) == 2
