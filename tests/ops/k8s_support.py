"""Offline Kubernetes checks for the k8s tests: render kustomizations with the real kustomize,
validate core kinds with kubernetes-validate --strict, CRD kinds with the upstream CRDs'
OpenAPI schemas (tests/ops/fixtures/crds), and walk every pod spec a manifest holds."""
from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from ops_helpers import REPO_ROOT

K8S = REPO_ROOT / "k8s"
CRDS = Path(__file__).parent / "fixtures" / "crds"
KUSTOMIZATIONS = {
    "local": K8S / "overlays" / "local",
    "cloud": K8S / "overlays" / "cloud",
    "trainer-v2": K8S / "training" / "trainer-v2",
    "training-operator-v1": K8S / "training" / "training-operator-v1",
}
CRD_FILES = {
    ("trainer.kubeflow.org", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    ("kubeflow.org", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
}
OWN_IMAGE = re.compile(r"^ghcr\.io/example/dtkd(-server)?:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?$")
PINNED_IMAGE = re.compile(r"^[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}$")


def k8s_version() -> str:
    import kubernetes_validate

    return kubernetes_validate.latest_version()


def kustomize_command() -> list[str]:
    """The real kustomize: standalone, or the one built into kubectl (`kubectl kustomize`)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.skip("neither kustomize nor kubectl is on PATH (GitHub's ubuntu runners have kubectl)")


@functools.lru_cache(maxsize=None)
def _render(path: str) -> str:
    proc = subprocess.run([*kustomize_command(), path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kustomize {path}: {proc.stderr}"
    return proc.stdout


def render(name: str) -> list[dict]:
    """The manifests kustomization ``name`` renders to (fresh copies: tests may mutate them)."""
    return [d for d in yaml.safe_load_all(_render(str(KUSTOMIZATIONS[name]))) if d]


def validate_core(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, k8s_version(), strict=True)


def _strictify(schema):
    """An OpenAPI v3 structural schema as JSON Schema, strict like `kubernetes-validate --strict`:
    an object with declared properties admits no others (the API server would silently prune
    them), nullable admits null, int-or-string admits both."""
    if isinstance(schema, list):
        return [_strictify(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strictify(v) for k, v in schema.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(group: str, kind: str, version: str):
    import jsonschema

    crd = yaml.safe_load((CRDS / CRD_FILES[(group, kind)]).read_text())
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind}: the CRD serves {sorted(served)}, not {version}"
    schema = copy.deepcopy(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server
    return jsonschema.Draft7Validator(_strictify(schema))


def validate_crd(doc: dict) -> str:
    """Validate a CRD-kind manifest against its upstream schema; returns the schema's label."""
    group, _, version = doc["apiVersion"].rpartition("/")
    validator = crd_validator(group, doc["kind"], version)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{doc['kind']} {doc['metadata']['name']}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    return f"{CRD_FILES[(group, doc['kind'])]} {version}"


def is_crd_kind(doc: dict) -> bool:
    return (doc["apiVersion"].rpartition("/")[0], doc["kind"]) in CRD_FILES


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod a manifest will create."""
    kind, spec = doc["kind"], doc.get("spec", {})
    name = f"{kind}/{doc['metadata']['name']}"
    if kind == "Pod":
        yield name, spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
        yield name, spec["template"]["spec"]
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for role, replica in spec["pytorchReplicaSpecs"].items():
            yield f"{name}/{role}", replica["template"]["spec"]
    elif kind in {"ClusterTrainingRuntime", "TrainingRuntime"}:
        for job in spec["template"]["spec"]["replicatedJobs"]:
            yield f"{name}/{job['name']}", job["template"]["spec"]["template"]["spec"]


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def security_problems(pod: dict) -> list[str]:
    """What keeps a pod spec from the locked-down shape every dtkd pod has (empty: none)."""
    problems = []
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    if psc.get("runAsUser", 1) == 0 or psc.get("runAsGroup", 1) == 0:
        problems.append("pod runs as uid/gid 0")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile is not RuntimeDefault")
    mounts_by_volume = {v["name"]: v for v in pod.get("volumes", [])}
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        who = f"container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{who}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{who}: privileged")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            problems.append(f"{who}: capabilities do not drop ALL")
        if sc.get("runAsUser") == 0:
            problems.append(f"{who}: runAsUser 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{who}: root filesystem is writable")
        elif not any(m["mountPath"] == "/tmp" and "emptyDir" in mounts_by_volume.get(m["name"], {})
                     for m in c.get("volumeMounts", [])):
            problems.append(f"{who}: read-only root filesystem without an emptyDir at /tmp")
        res = c.get("resources") or {}
        for bound in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (res.get(bound) or {}):
                    problems.append(f"{who}: no {bound}.{what}")
    return problems


def image_problems(image: str) -> list[str]:
    if image.endswith(":latest") or ":latest@" in image:
        return [f"{image}: :latest"]
    if OWN_IMAGE.match(image) or PINNED_IMAGE.match(image):
        return []
    return [f"{image}: neither dtkd's own versioned image nor pinned by tag@sha256 digest"]
