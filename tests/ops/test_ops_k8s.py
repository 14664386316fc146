"""Kubernetes manifests and the ZenML Kubernetes run config, validated offline.

Core kinds: kubernetes-validate --strict (bundled schemas). The PyTorchJob CRD has no bundled
schema: its structure is checked here and every replica's pod template is validated strictly as a
core PodTemplate. The ZenML overlay is validated against ZenML's own settings models."""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ops_helpers import REPO_ROOT
from dtkd_ops.runconfig import deep_merge, main as runconfig_main, merge_files

K8S = REPO_ROOT / "k8s"
CORE_MANIFESTS = ["namespace.yaml", "pvc-data.yaml", "rbac.yaml"]
GPU = "nvidia.com/gpu"


def _docs(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _strict(doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("name", CORE_MANIFESTS)
def test_core_manifests_validate_strictly(name):
    docs = _docs(name)
    assert docs
    for doc in docs:
        _strict(doc)
        assert doc["metadata"].get("namespace", "dtkd") == "dtkd" or doc["kind"] == "Namespace"


def test_cli_validator_agrees():
    exe = Path(REPO_ROOT / ".venv" / "bin" / "kubernetes-validate")
    if not exe.exists():
        pytest.skip("kubernetes-validate console script not installed in .venv")
    proc = subprocess.run([str(exe), "--strict", "--quiet", *(str(K8S / n) for n in CORE_MANIFESTS)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_strict_validation_catches_a_typo():
    import kubernetes_validate

    pvc = _docs("pvc-data.yaml")[0]
    pvc["spec"]["accesModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        _strict(pvc)


def test_pytorchjob_structure_and_pod_templates():
    (job,) = _docs("pytorchjob-distill.yaml")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"]["namespace"] == "dtkd"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) <= {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    assert int(job["spec"]["nprocPerNode"]) >= 1
    pvc_name = _docs("pvc-data.yaml")[0]["metadata"]["name"]
    outs = set()
    for role, spec in specs.items():
        assert spec["restartPolicy"] in {"OnFailure", "ExitCode"}, f"{role}: must restart to resume"
        template = spec["template"]
        _strict({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"distill-{role.lower()}"},
                 "template": template})
        (container,) = template["spec"]["containers"]
        assert container["name"] == "pytorch", "the training operator only wires a container named 'pytorch'"
        cmd = container["command"] + container["args"]
        assert cmd[:3] == ["torchrun", "-m", "dtkd.launch"]
        assert importlib.util.find_spec("dtkd.launch") is not None
        assert cmd[cmd.index("--stage") + 1] == "distill"
        outs.add(cmd[cmd.index("--out") + 1])
        res = container["resources"]
        assert res["limits"][GPU] == res["requests"][GPU] == "1"
        claims = [v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == [pvc_name]
        assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
    assert len(outs) == 1, "all replicas must write/resume the same run directory"


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
        assert f"{step}(" in pipeline_src, f"{step} is not a step of the training pipeline"
        s = KubernetesOrchestratorSettings.model_validate(overlay["steps"][step]["settings"]["orchestrator.kubernetes"])
        pod = s.pod_settings
        assert pod.resources["limits"][GPU] == "1"
        # the pod settings, as the orchestrator renders them, form a valid core pod
        _strict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": step.replace("_", "-")},
                 "spec": {"containers": [{"name": "main", "image": "x", "resources": pod.resources,
                                          "volumeMounts": pod.volume_mounts}],
                          "volumes": pod.volumes, "tolerations": pod.tolerations,
                          "nodeSelector": pod.node_selectors}})


def test_overlay_merges_over_the_training_config(tmp_path):
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    default = REPO_ROOT / "configs" / "default.yaml"
    if not default.exists():
        pytest.skip("configs/default.yaml not written yet")
    out = tmp_path / "run.yaml"
    assert runconfig_main([str(default), str(K8S / "zenml-run-k8s.yaml"), "-o", str(out)]) == 0
    merged = yaml.safe_load(out.read_text())
    PipelineRunConfiguration.model_validate(merged)
    assert merged["parameters"] == yaml.safe_load(default.read_text())["parameters"]
    assert "orchestrator.kubernetes" in merged["settings"]


def test_deep_merge_and_stack_script():
    assert deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"c": 3}, "l": [2]}) == {"a": {"b": 1, "c": 3}, "l": [2]}
    proc = subprocess.run(["bash", "-n", str(K8S / "zenml-stack.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert runconfig_main([str(K8S / "missing.yaml")]) == 2
