"""ZenML compiles both pipelines against the Kubernetes stack that k8s/zenml-stack.sh registers,
and every step Job that ZenML's own manifest builders make from the project's settings is a valid
Kubernetes object carrying the GPU limits, the volumes, the securityContext and the image.

No cluster: the stack's kubeconfig points nowhere (compiling never calls the cluster). The stack
is the script's own registrations, replayed: the script runs with a stand-in `zenml` on PATH that
records each call, and a subprocess (k8s_zenml_compile.py) registers the same components (same
names, flavors, options) in an isolated ZenML store and compiles there. The one substitution: the
bucket artifact store becomes a local one, because s3fs/boto3 are not in the lock (the artifact
store plays no part in compilation)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s_support import K8S, security_problems, validate_core
from ops_helpers import REPO_ROOT

GPU = "nvidia.com/gpu"
GPU_STEPS = {"train_cnn_teacher", "train_vit_teacher", "distill_student"}
TRAINING_STEPS = ["ingest_data", "validate_data", "train_cnn_teacher", "train_vit_teacher", "distill_student",
                  "evaluate_student", "register_student"]
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: nobody, user: {token: not-a-token}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody, namespace: dtkd}}]
current-context: nowhere
"""
FAKE_ZENML = """#!/usr/bin/env bash
printf '%s\\n' "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@")" >> "$ZENML_CALLS"
[ "$2" = describe ] && exit 1   # nothing registered yet: the script registers everything
[ "$1 $2" = "secret get" ] && exit 0   # the dtkd_mlflow secret exists (the subprocess creates it)
exit 0
"""


def replay_stack_script(tmp_path) -> list[list[str]]:
    """Run k8s/zenml-stack.sh with a recording `zenml`; its calls, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zenml").write_text(FAKE_ZENML)
    (bin_dir / "zenml").chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ZENML_CALLS": str(calls),
           "DTKD_K8S_CONTEXT": "nowhere", "DTKD_ARTIFACT_URI": "s3://dtkd-test/zenml",
           "DTKD_REGISTRY_URI": "registry.example.com/dtkd", "DTKD_INSTALL_INTEGRATIONS": "0"}
    proc = subprocess.run(["bash", str(K8S / "zenml-stack.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()]


SOURCES = ["dtkd", "dtkd_ops", "steps", "pipelines", "configs", "k8s"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The script's stack in an isolated ZenML store, both pipelines compiled on it with the
    paper's config + the Kubernetes overlay (+ the retraining schedule), and every step Job, from
    a subprocess (tests/ops/k8s_zenml_compile.py) in a scratch source root of symlinks."""
    from dtkd_ops.runconfig import merge_files

    tmp = tmp_path_factory.mktemp("zenml-k8s")
    (tmp / "kubeconfig").write_text(KUBECONFIG)
    calls = replay_stack_script(tmp)
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        (src / name).symlink_to(REPO_ROOT / name)
    (src / "compile.py").symlink_to(Path(__file__).with_name("k8s_zenml_compile.py"))
    for name, files in {"training": ["configs/paper_hmdb51.yaml", "k8s/zenml-run-k8s.yaml"],
                        "retraining": ["configs/paper_hmdb51.yaml", "k8s/zenml-run-k8s.yaml",
                                       "configs/retrain-schedule.yaml"]}.items():
        (src / f"{name}.yaml").write_text(yaml.safe_dump(merge_files([REPO_ROOT / f for f in files])))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "ZENML_"))}
    env.update(ZENML_CONFIG_PATH=str(tmp / "zenml"), KUBECONFIG=str(tmp / "kubeconfig"), DTKD_HOME=str(tmp / "home"),
               ZENML_ANALYTICS_OPT_IN="false", ZENML_ENABLE_RICH_TRACEBACK="false", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "compile.py", str(tmp / "calls.jsonl"), str(tmp / "out.json")], cwd=src,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {"calls": calls, **json.loads((tmp / "out.json").read_text())}


def without_zenml_null_keys(job: dict) -> dict:
    """ZenML 0.98 merges `container_security_context` into `V1SecurityContext(privileged=...)
    .to_dict()`, which adds every field in snake_case with value null (manifest_utils.add_pod_settings).
    The API server drops those unknown keys (fieldValidation=Warn, its default), so they change
    nothing; `--strict` rejects them. Remove them, after checking that each one is null, so
    strict validation judges what the project sets. An upstream bug."""
    spec = job["spec"]["template"]["spec"] if job["kind"] == "Job" else job["spec"]
    for c in spec["containers"]:
        sc = c.get("securityContext") or {}
        snake = {k for k in sc if "_" in k}
        assert all(sc[k] is None for k in snake), {k: sc[k] for k in snake}
        c["securityContext"] = {k: v for k, v in sc.items() if k not in snake}
    return job


def test_the_script_registers_a_kubernetes_stack_with_a_remote_tracker(compiled):
    from dtkd_ops.home import TRACKER_NAME
    from steps.tracking import TRACKED

    registered = {kind: name for kind, verb, name, *_ in compiled["calls"] if verb == "register"}
    assert registered["experiment-tracker"] != TRACKER_NAME, "a tracker named unlike the local one: the case that broke"
    assert TRACKED["experiment_tracker"] is True, "steps take the active stack's tracker, whatever its name"
    stack = compiled["stack"]
    assert stack["name"] == registered["stack"] == "dtkd_k8s"
    assert stack["orchestrator"] == "kubernetes" and stack["namespace"] == "dtkd"
    assert stack["tracker"] == registered["experiment-tracker"]
    assert stack["tracking_uri"] == "http://mlflow.dtkd.svc:5000"
    from steps.stack import LOCK_SECRET
    tracker_call = next(c for c in compiled["calls"] if c[:2] == ["experiment-tracker", "register"])
    assert f"--tracking_username={{{{{LOCK_SECRET}.username}}}}" in tracker_call, \
        "the tracker's credentials come from the secret that also carries the shared lock's URL"


def test_training_pipeline_compiles_with_the_stack_tracker(compiled):
    training = compiled["training"]
    assert training["steps"] == TRAINING_STEPS
    tracked = {n for n, t in training["experiment_tracker"].items() if t}
    assert {"validate_data", "distill_student", "register_student"} <= tracked
    assert all(t is True for t in training["experiment_tracker"].values() if t)
    assert training["parent_image"] == TRAINJOB_IMAGE and training["skip_build"] is True, \
        "the step pods run the pinned training image itself, the TrainJob's"


TRAINJOB_IMAGE = yaml.safe_load((K8S / "training" / "trainer-v2" / "trainjob-distill.yaml").read_text())[
    "spec"]["trainer"]["image"]


def check_step_job(job: dict, gpu: bool) -> None:
    job = without_zenml_null_keys(job)
    validate_core(job)
    pod = job["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    assert main["image"] == TRAINJOB_IMAGE
    assert security_problems(pod) == []
    assert pod["serviceAccountName"] == "dtkd-pipeline-runner"
    limits = main["resources"]["limits"]
    if gpu:
        assert limits[GPU] == main["resources"]["requests"][GPU] == "1"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    else:
        assert GPU not in limits, "CPU steps must not hold a GPU"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert claims[mounts["/data"]] == "dtkd-data" and "/dev/shm" in mounts
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["DTKD_HOME"] == "/data/dtkd-home" and env["HOME"] == "/tmp"
    assert env["ZENML_CONFIG_PATH"].startswith("/tmp/"), "ZenML writes its config: not into the read-only image"


@pytest.mark.parametrize("step", TRAINING_STEPS)
def test_every_training_step_job_validates_strictly(compiled, step):
    check_step_job(compiled["training"]["jobs"][step], gpu=step in GPU_STEPS)


def test_orchestrator_pod_validates_strictly(compiled):
    for name in ("training", "retraining"):
        pod = without_zenml_null_keys(compiled[name]["orchestrator_pod"])
        validate_core(pod)
        assert security_problems(pod["spec"]) == []
        assert pod["spec"]["serviceAccountName"] == "dtkd-pipeline-runner"


def test_null_key_workaround_keeps_what_the_project_sets():
    job = {"kind": "Job", "spec": {"template": {"spec": {"containers": [{"securityContext": {
        "run_as_user": None, "allowPrivilegeEscalation": False}}]}}}}
    assert without_zenml_null_keys(job)["spec"]["template"]["spec"]["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False}
    with pytest.raises(AssertionError):   # a snake_case key with a value would be a lost setting
        without_zenml_null_keys({"kind": "Job", "spec": {"template": {"spec": {"containers": [{"securityContext": {
            "read_only_root_filesystem": True}}]}}}})


def test_retraining_pipeline_compiles_with_its_schedule(compiled):
    """The retraining pipeline is dynamic: its steps are compiled when the orchestrator pod runs
    it, from the pipeline-level settings (and `depends_on` templates). What compiles here: the
    stack, the settings, the schedule that becomes the CronJob, and the step Job that the
    pipeline-level pod settings make (check_data_version and every CPU step)."""
    retraining = compiled["retraining"]
    cron = yaml.safe_load((REPO_ROOT / "configs" / "retrain-schedule.yaml").read_text())["schedule"]["cron_expression"]
    assert retraining["schedule"] == cron
    check_step_job(retraining["pipeline_level_job"], gpu=False)


def test_retraining_gpu_steps_get_their_gpu_settings(compiled):
    """ZenML 0.98 applies a run config's `steps:` to a dynamic pipeline's steps only when they are
    its `depends_on` templates (pipelines/retraining.py): else the GPU steps get the CPU pod."""
    assert GPU_STEPS <= set(compiled["retraining"]["steps"])


def test_stack_script_refuses_a_local_artifact_store():
    env = {**os.environ, "DTKD_K8S_CONTEXT": "c", "DTKD_ARTIFACT_URI": "/tmp/artifacts", "DTKD_REGISTRY_URI": "r"}
    proc = subprocess.run(["bash", str(K8S / "zenml-stack.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "s3://" in proc.stderr
