"""The workflow against the shared servers: registry through repository secrets (no registry in
actions/cache), actions pinned by commit SHA on the node24 runtime, the gate's exit codes."""
from __future__ import annotations

import re

import yaml

from ops_helpers import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "train-and-gate.yml"
SERVER_SECRETS = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "DTKD_LOCK_URL",
                  "ZENML_STORE_URL", "ZENML_STORE_API_KEY"}


def _workflow():
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def _steps():
    return [(job, step) for job, spec in _workflow()["jobs"].items() for step in spec["steps"]]


def test_servers_come_from_repository_secrets_and_nothing_caches_the_registry():
    env = _workflow()["env"]
    for name in SERVER_SECRETS:
        assert env[name] == f"${{{{ secrets.{name} }}}}", name
    text = WORKFLOW.read_text()
    assert "actions/cache" not in "\n".join(s.get("uses", "") for _, s in _steps())
    assert ".dtkd/mlflow" not in text and "sqlite" not in text
    for _, step in _steps():
        paths = str((step.get("with") or {}).get("path", ""))
        assert "mlflow" not in paths, f"{step.get('name')}: the registry is the server, not an artifact"


def test_tests_never_touch_the_shared_servers():
    (test_step,) = [s for _, s in _steps() if "make test" in s.get("run", "")]
    unset = set(re.findall(r"-u (\w+)", test_step["run"]))
    assert unset == SERVER_SECRETS


def test_actions_pinned_by_sha_with_their_release():
    uses = [s["uses"] for _, s in _steps() if "uses" in s]
    assert uses
    for use in uses:
        assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", use), f"{use}: pin by full commit SHA"
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"# v\d+\.\d+\.\d+ \(actions/[\w-]+ tag v\d+\.\d+\.\d+, node24\)", line), line


def test_gate_passes_on_0_and_3_and_promote_needs_0():
    steps = {s.get("id") or s.get("name"): s for _, s in _steps()}
    gate = steps["gate"]["run"]
    assert "0|3) exit 0" in gate and '*) echo "::error::promotion gate exit' in gate
    (promote,) = [s["run"] for _, s in _steps() if "cli promote" in s.get("run", "")]
    assert 'exit "$code"' in promote
    for _, s in _steps():   # pipelines run on the shared stack, by name
        if "pipeline run" in s.get("run", ""):
            assert all('-s "$DTKD_STACK"' in line for line in s["run"].splitlines() if "pipeline run" in line)
