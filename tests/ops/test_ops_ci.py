"""The CI workflow: triggers, the approval gate before promotion, and that what it calls exists."""
from __future__ import annotations

import re

import yaml

from ops_helpers import REPO_ROOT
from dtkd_ops.cli import build_parser

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "train-and-gate.yml"


def _workflow():
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_triggers_and_jobs():
    wf = _workflow()
    assert "pull_request" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
    jobs = wf["jobs"]
    promote = jobs["promote"]
    assert promote["needs"] == "train-and-gate"
    assert promote["environment"] == "production", "promotion must wait for a manual approval"
    assert "refs/heads/main" in promote["if"] and "push" in promote["if"]
    assert promote["concurrency"]["cancel-in-progress"] is False
    env = wf["env"]
    assert env["ZENML_ANALYTICS_OPT_IN"] == "false" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["DVC_NO_ANALYTICS"] == "1"


def test_commands_exist():
    text = WORKFLOW.read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in set(re.findall(r"\bmake (\w+)", text)):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target '{target}'"
    parser = build_parser()
    for cmd in set(re.findall(r"dtkd_ops\.cli (\w[\w-]*)", text)):
        parser.parse_args([cmd, "--model", "m"] if cmd in {"gate", "promote", "rollback"} else [cmd])
    steps = [s.get("run", "") for s in _workflow()["jobs"]["train-and-gate"]["steps"]]
    order = [next(i for i, s in enumerate(steps) if key in s) for key in ("make test", "pipeline run pipelines.training", "cli gate")]
    assert order == sorted(order), "tests, then the pipeline, then the gate"
    assert (REPO_ROOT / "configs" / "gate.yaml").is_file()
