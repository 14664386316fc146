"""Every manifest of every kustomization, rendered by the real kustomize and validated offline:
core kinds with `kubernetes-validate --strict` at the newest Kubernetes it knows, TrainJob,
ClusterTrainingRuntime and PyTorchJob with the upstream CRDs' schemas (fixtures/crds/README.md),
and the properties a cluster admin relies on: locked-down pods, pinned images, Secrets by
reference only, least-privilege RBAC, the distillation jobs' paths."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from k8s_support import (K8S, KUSTOMIZATIONS, containers, image_problems, is_crd_kind, pod_specs, render,
                         security_problems, validate_core, validate_crd)
from ops_helpers import REPO_ROOT

OVERLAYS = ["local", "cloud"]
TRAINING = ["trainer-v2", "training-operator-v1"]
GPU = "nvidia.com/gpu"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_manifest_validates(name, record_property):
    docs = render(name)
    assert docs
    checked = []
    for doc in docs:
        if is_crd_kind(doc):
            schema = validate_crd(doc)
        else:
            validate_core(doc)
            schema = "kubernetes-validate --strict"
        # The pod templates inside CRD kinds are core pods too: validate them as such.
        for where, pod in pod_specs(doc):
            validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                           "template": {"spec": pod}})
        checked.append(f"{doc['kind']}/{doc['metadata']['name']} ({doc['apiVersion']}; {schema})")
    record_property("validated", checked)
    print(f"\n{name}: " + "\n  ".join(checked))


def test_base_objects_are_namespaced_in_dtkd():
    for name in OVERLAYS + ["training-operator-v1"]:
        for doc in render(name):
            if doc["kind"] not in {"Namespace", "ClusterTrainingRuntime"}:
                assert doc["metadata"].get("namespace") == "dtkd", f"{name}: {doc['kind']} {doc['metadata']['name']}"
    runtime, job = sorted(render("trainer-v2"), key=lambda d: d["kind"])
    assert "namespace" not in runtime["metadata"], "ClusterTrainingRuntime is cluster-scoped"
    assert job["metadata"]["namespace"] == "dtkd"


def test_strict_validation_catches_typos():
    import kubernetes_validate

    pvc = next(d for d in render("local") if d["kind"] == "PersistentVolumeClaim")
    pvc["spec"]["accesModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(pvc)
    job = next(d for d in render("trainer-v2") if d["kind"] == "TrainJob")
    job["spec"]["trainer"]["numProcsPerNode"] = job["spec"]["trainer"].pop("numProcPerNode")
    with pytest.raises(AssertionError, match="numProcsPerNode"):
        validate_crd(job)
    pj = next(d for d in render("training-operator-v1") if d["kind"] == "PyTorchJob")
    pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePolicy"] = "x"
    with pytest.raises(AssertionError, match="imagePolicy"):
        validate_crd(pj)
    runtime = next(d for d in render("trainer-v2") if d["kind"] == "ClusterTrainingRuntime")
    runtime["spec"]["mlPolicy"]["torch"]["nprocPerNode"] = "auto"
    with pytest.raises(AssertionError, match="nprocPerNode"):
        validate_crd(runtime)


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_pod_is_locked_down(name):
    pods = [(f"{name}: {where}", pod) for doc in render(name) for where, pod in pod_specs(doc)]
    assert pods
    for where, pod in pods:
        assert security_problems(pod) == [], where


def test_security_check_flags_an_open_pod():
    pod = {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]}
    problems = "\n".join(security_problems(pod))
    for expected in ("runAsNonRoot", "allowPrivilegeEscalation", "privileged", "drop ALL", "writable", "requests.cpu"):
        assert expected in problems


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_images_are_pinned(name):
    images = [c["image"] for doc in render(name) for _, pod in pod_specs(doc) for c in containers(pod)]
    images += [d["spec"]["trainer"]["image"] for d in render(name) if d["kind"] == "TrainJob"]
    assert images
    for image in images:
        assert image_problems(image) == []
    assert image_problems("postgres:17") and image_problems("ghcr.io/example/dtkd:latest")
    assert image_problems("python:3.11-slim") and not image_problems("python:3.11-slim@sha256:" + "a" * 64)


# Grep level, over every YAML under k8s/ (rendered or not, templates included) and the Dockerfile.
ROOT_OR_LATEST = [
    (re.compile(r":latest\b"), "an image by :latest"),
    (re.compile(r"runAsUser:\s*0\b"), "runAsUser: 0"),
    (re.compile(r"runAsGroup:\s*0\b"), "runAsGroup: 0"),
    (re.compile(r"runAsNonRoot:\s*false"), "runAsNonRoot: false"),
    (re.compile(r"privileged:\s*true"), "privileged: true"),
    (re.compile(r"allowPrivilegeEscalation:\s*true"), "allowPrivilegeEscalation: true"),
    (re.compile(r"^\s*USER\s+(root|0)(:|\s|$)", re.M), "USER root"),
]


def grep_root_or_latest(text: str) -> list[str]:
    return [why for pattern, why in ROOT_OR_LATEST if pattern.search(text)]


def test_no_manifest_runs_as_root_or_uses_latest():
    files = sorted(K8S.rglob("*.yaml")) + [REPO_ROOT / "Dockerfile"]
    assert len(files) > 10
    for path in files:
        assert grep_root_or_latest(path.read_text()) == [], path
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S))
    assert list(stages)[-1] == "train", "the default target (the last stage) is the training image"
    for target in ("train", "server"):
        assert re.search(r"^USER\s+10001:10001\s*$", stages[target], re.M), f"{target} must run as uid 10001"
        assert "build-essential" not in stages[target], f"{target}: no build tools in a final stage"
    assert grep_root_or_latest("image: x:latest\nrunAsUser: 0\nUSER root\n") == [
        "an image by :latest", "runAsUser: 0", "USER root"]


def _secret_refs(docs):
    for doc in docs:
        for _, pod in pod_specs(doc):
            for c in containers(pod):
                for env in c.get("env", []):
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        yield ref["name"], ref["key"]
                for src in c.get("envFrom", []):
                    if "secretRef" in src:
                        yield src["secretRef"]["name"], None


def test_secrets_are_references_to_templates_without_values():
    templates = [d for d in yaml.safe_load_all((K8S / "secrets" / "secrets.template.yaml").read_text()) if d]
    defined = {}
    for secret in templates:
        validate_core(secret)
        assert all(re.search(r"<[^>]+>", v) for v in secret["stringData"].values()), secret["metadata"]["name"]
        defined[secret["metadata"]["name"]] = set(secret["stringData"])
    for name in KUSTOMIZATIONS:
        docs = render(name)
        assert not [d for d in docs if d["kind"] == "Secret"], f"{name} ships a Secret: values belong to the cluster"
        for secret, key in _secret_refs(docs):
            assert secret in defined, f"{name}: Secret {secret} has no template"
            assert key is None or key in defined[secret], f"{name}: {secret}.{key} missing from the template"
    used = {s for n in OVERLAYS for s, _ in _secret_refs(render(n))}
    assert used >= {"dtkd-mlflow-db", "dtkd-zenml-db", "dtkd-zenml-server"}


def test_rbac_is_least_privilege():
    roles = {d["metadata"]["name"]: d["rules"] for d in render("local") if d["kind"] == "Role"}
    assert not [d for d in render("local") if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    for name, rules in roles.items():
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], name
            if "secrets" in rule["resources"]:
                assert rule.get("resourceNames") and set(rule["verbs"]) <= {"get"}, f"{name}: Secrets only by name"
    runner = roles["dtkd-pipeline-runner"]
    assert not any("secrets" in r["resources"] for r in runner)
    granted = {(g, res, v) for r in runner for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    # what ZenML's orchestrator pod does: one Job per step, follows its pods and logs
    assert {("batch", "jobs", "create"), ("", "pods", "list"), ("", "pods/log", "get")} <= granted
    sa = [d for d in render("local") if d["kind"] == "ServiceAccount"]
    settings = yaml.safe_load((K8S / "zenml-run-k8s.yaml").read_text())["settings"]["orchestrator.kubernetes"]
    assert settings["service_account_name"] in {s["metadata"]["name"] for s in sa}


def test_services_run_the_team_stack_commands():
    """MLflow: `mlflow server` on PostgreSQL with proxied artifacts; ZenML: its server app. The
    flags are parsed by MLflow's own CLI, so a renamed option fails here, not in the cluster."""
    import importlib.util

    from mlflow.cli import server

    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("local")}
    (mlflow,) = docs["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"]
    assert mlflow["command"] == ["mlflow", "server"]
    ctx = server.make_context("server", list(mlflow["args"]))
    assert ctx.params["backend_store_uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert ctx.params["serve_artifacts"] is True and ctx.params["artifacts_destination"] == "/mlflow/artifacts"
    assert ctx.params["app_name"] == "basic-auth", "the registry of record takes logins, as the team stack's"
    env = {e["name"]: e for e in mlflow["env"]}
    auth_ini = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    auth_mount = next(m for m in mlflow["volumeMounts"] if auth_ini.startswith(m["mountPath"] + "/"))
    auth_volume = next(v for v in docs["Deployment", "mlflow"]["spec"]["template"]["spec"]["volumes"]
                       if v["name"] == auth_mount["name"])
    assert auth_volume["secret"]["secretName"] == "dtkd-mlflow-auth"
    init = docs["ConfigMap", "postgres-init"]["data"]["init-auth-db.sql"]
    assert "CREATE DATABASE mlflow_auth" in init, "the auth app's users database exists on first start"
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "dtkd-mlflow-db"
    mounts = {m["mountPath"]: m["name"] for m in mlflow["volumeMounts"]}
    pod = docs["Deployment", "mlflow"]["spec"]["template"]["spec"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims[mounts["/mlflow/artifacts"]] == "dtkd-mlflow-artifacts"
    (zenml,) = docs["Deployment", "zenml-server"]["spec"]["template"]["spec"]["containers"]
    module, _, app = zenml["command"][1].partition(":")
    assert zenml["command"][0] == "uvicorn" and app == "app" and importlib.util.find_spec(module) is not None
    assert {"ZENML_STORE_URL", "ZENML_SERVER_JWT_SECRET_KEY"} <= {e["name"] for e in zenml["env"]}
    # the in-cluster databases the local overlay runs are what the Secret templates point at
    assert ("StatefulSet", "postgres") in docs and ("StatefulSet", "mysql") in docs


def test_cloud_overlay_uses_managed_databases_and_rwx():
    local = {(d["kind"], d["metadata"]["name"]): d for d in render("local")}
    cloud = {(d["kind"], d["metadata"]["name"]): d for d in render("cloud")}
    assert set(local) - set(cloud) == {("StatefulSet", "postgres"), ("Service", "postgres"),
                                       ("ConfigMap", "postgres-init"), ("StatefulSet", "mysql"), ("Service", "mysql")}
    assert cloud["PersistentVolumeClaim", "dtkd-data"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert cloud["PersistentVolumeClaim", "dtkd-data"]["spec"]["storageClassName"]
    assert local["PersistentVolumeClaim", "dtkd-data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    env = {e["name"]: e.get("value") for e in
           cloud["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "mlflow.example.com" in env["MLFLOW_ALLOWED_HOSTS"].split(",")


# The distillation jobs. Paths inside the image (/opt/dtkd/...) are the repository's files.
def _in_repo(path: str):
    assert path.startswith("/opt/dtkd/"), path
    return REPO_ROOT / path.removeprefix("/opt/dtkd/")


def _flag(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return values


def distill_commands():
    """(where, command + args, container-or-trainer, pod spec or None) of each distillation entry point."""
    out = []
    for doc in render("training-operator-v1"):
        for where, pod in pod_specs(doc):
            (c,) = pod["containers"]
            out.append((where, c["command"] + c["args"], c, pod))
    runtime = {d["metadata"]["name"]: d for d in render("trainer-v2") if d["kind"] == "ClusterTrainingRuntime"}
    for doc in render("trainer-v2"):
        if doc["kind"] == "TrainJob":
            (pod,) = [p for _, p in pod_specs(runtime[doc["spec"]["runtimeRef"]["name"]])]
            t = doc["spec"]["trainer"]
            out.append((f"TrainJob/{doc['metadata']['name']}", t["command"] + t["args"], t, pod))
    return out


def test_distill_jobs_prepare_then_torchrun_with_paths_that_exist():
    from dtkd.config import load_config
    from dtkd.launch import parse_args

    commands = distill_commands()
    assert [w.split("/")[0] for w, *_ in commands] == ["PyTorchJob", "PyTorchJob", "TrainJob"]
    run_dirs = set()
    for where, cmd, _, pod in commands:
        assert cmd[:2] == ["python", "/opt/dtkd/k8s/prepare_run.py"] and _in_repo(cmd[1]).is_file(), where
        prep, torchrun = cmd[2:cmd.index("--")], cmd[cmd.index("--") + 1:]
        (run_dir,) = _flag(prep, "--run-dir")
        (config,) = _flag(prep, "--config")
        assert _in_repo(config).is_file() and all(_in_repo(o).is_file() for o in _flag(prep, "--overlay")), where
        cfg = load_config(_in_repo(config))
        teachers = dict(t.split("=", 1) for t in _flag(prep, "--teacher"))
        assert set(teachers) == {"cnn", "vit"}
        for role, uri in teachers.items():   # the names the training pipeline registers teachers under
            assert uri.startswith(f"models:/{cfg.registry.teacher_prefix}-{role}@"), (where, uri)
        assert torchrun[:3] == ["torchrun", "-m", "dtkd.launch"]
        launch = parse_args(torchrun[3:])
        assert launch.stage == "distill" and str(launch.out) == run_dir and str(launch.config) == f"{run_dir}/run.yaml"
        assert sorted(launch.teacher) == [f"cnn={run_dir}/teachers/cnn.pt", f"vit={run_dir}/teachers/vit.pt"]
        # the run directory (checkpoints: a restarted pod resumes) is on the data PVC
        data = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "dtkd-data"}
        (node,) = pod["containers"]
        mounts = [m["mountPath"] for m in node["volumeMounts"] if m["name"] in data]
        assert mounts == ["/data"] and run_dir.startswith("/data/runs/"), where
        assert any(m["mountPath"] == "/dev/shm" for m in node["volumeMounts"])
        run_dirs.add(run_dir)
    assert run_dirs == {"/data/runs/distill-x3d-s"}, "every replica must write/resume the same run directory"


def test_distill_jobs_request_gpus_and_restart():
    pj = next(d for d in render("training-operator-v1") if d["kind"] == "PyTorchJob")
    for role, spec in pj["spec"]["pytorchReplicaSpecs"].items():
        assert spec["restartPolicy"] in {"OnFailure", "ExitCode"}, f"{role}: must restart to resume"
        (c,) = spec["template"]["spec"]["containers"]
        assert c["name"] == "pytorch", "the training operator only wires a container named 'pytorch'"
        assert c["resources"]["limits"][GPU] == c["resources"]["requests"][GPU] == "1"
    tj = next(d for d in render("trainer-v2") if d["kind"] == "TrainJob")
    t = tj["spec"]["trainer"]
    assert t["numNodes"] * t["numProcPerNode"] >= 2, "multi-GPU"
    assert t["resourcesPerNode"]["limits"][GPU] == str(t["numProcPerNode"])
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "DTKD_HOME"} <= {
        e["name"] for e in t["env"]}, "the teachers come from an MLflow server that takes logins"
    runtime = next(d for d in render("trainer-v2") if d["kind"] == "ClusterTrainingRuntime")
    assert "torch" in runtime["spec"]["mlPolicy"]
    assert runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] >= 1
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    # the Trainer fills the container `node` of the job whose ancestor step is `trainer`
    assert job["name"] == "node" and job["template"]["metadata"]["labels"][
        "trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert [c["name"] for c in job["template"]["spec"]["template"]["spec"]["containers"]] == ["node"]


def test_pinning_the_image_reaches_the_trainjob(tmp_path):
    """docs/deploy.md step 3 pins dtkd's image with kustomize's `images:`; kustomize only rewrites
    container lists by itself, so trainer-v2/kustomizeconfig.yaml teaches it spec.trainer.image."""
    import shutil
    import subprocess

    from k8s_support import kustomize_command

    copy = tmp_path / "trainer-v2"
    shutil.copytree(KUSTOMIZATIONS["trainer-v2"], copy)
    pinned = "registry.example.com/team/dtkd:0.1.0@sha256:" + "b" * 64
    with open(copy / "kustomization.yaml", "a") as f:
        # what `kustomize edit set image ghcr.io/example/dtkd=<registry>/dtkd:0.1.0@sha256:...` writes
        f.write(f"images:\n  - name: ghcr.io/example/dtkd\n    newName: registry.example.com/team/dtkd\n"
                f"    newTag: 0.1.0@sha256:{'b' * 64}\n")
    out = subprocess.run([*kustomize_command(), str(copy)], capture_output=True, text=True, check=True).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert docs["TrainJob"]["spec"]["trainer"]["image"] == pinned
    (pod,) = [p for _, p in pod_specs(docs["ClusterTrainingRuntime"])]
    assert pod["containers"][0]["image"] == pinned
    assert image_problems(pinned) == []


def _dockerfile_stages() -> dict[str, str]:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))


def test_the_image_holds_what_the_manifests_run():
    """Every /opt/dtkd/... path a training manifest names is copied there by the train stage,
    from a file that exists; every COPY source of the Dockerfile exists and is not .dockerignored."""
    stages = _dockerfile_stages()
    train = stages["train"]
    (workdir,) = re.findall(r"^WORKDIR (\S+)", train, re.M)
    copied = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", train, re.M):
        *sources, dest = line.split()
        target = f"{workdir}/{dest.strip('./')}"          # relative destinations: under WORKDIR
        # into a directory (dest ends with /): each source keeps its name; else the dest is the copy
        copied |= {f"{target}/{Path(src).name}" for src in sources} if dest.endswith("/") else {target}
    named = {a.split("=", 1)[-1] for _, cmd, _, _ in distill_commands() for a in cmd if "/opt/dtkd/" in a}
    assert named
    for path in named:
        assert any(path == c or path.startswith(c + "/") for c in copied), f"{path}: not copied into the image"
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for stage in stages.values():
        for line in re.findall(r"^COPY (?!--from)(.+)$", stage, re.M):
            for src in line.split()[:-1]:
                assert (REPO_ROOT / src).exists(), f"COPY {src}: no such file"
                assert src.split("/")[0] not in ignored, f"COPY {src}: excluded by .dockerignore"
