"""End to end: `zenml pipeline run` on a tiny config in an isolated ZenML + MLflow home.

Everything is real: the ZenML local orchestrator and sqlite store, the MLflow sqlite tracking store
and registry, Great Expectations, PyAV-encoded videos. The run and the queries happen in
subprocesses so that this test's ZenML/MLflow homes never leak into other tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ZENML = str(Path(sys.executable).with_name("zenml"))

QUERY = r"""
import json, sys
import mlflow
from zenml.client import Client
from pipelines.stack import tracking_uri

client = Client()
runs = client.list_pipeline_runs(sort_by="desc:created", size=10).items
out = {"runs": []}
for run in runs:
    steps = {}
    for name, step in run.steps.items():
        steps[name] = {"status": str(step.status), "outputs": sorted(step.outputs)}
    out["runs"].append({"status": str(run.status), "steps": steps})
mc = mlflow.MlflowClient(tracking_uri=tracking_uri())
out["registered"] = {}
for rm in mc.search_registered_models():
    out["registered"][rm.name] = {"aliases": dict(rm.aliases) if isinstance(rm.aliases, dict) else {a: v for a, v in rm.aliases.items()}}
exp = mc.get_experiment_by_name("dtkd")
metric_keys = set()
for r in mc.search_runs([exp.experiment_id]):
    metric_keys |= set(r.data.metrics)
out["metric_keys"] = sorted(metric_keys)
print("JSON:" + json.dumps(out))
"""


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        ZENML_CONFIG_PATH=str(tmp_path / "zenml"),
        DTKD_HOME=str(tmp_path / "home"),
        ZENML_ANALYTICS_OPT_IN="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        ZENML_ENABLE_RICH_TRACEBACK="false",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
    )
    return env


def _run(cmd: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out


def _tiny_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["parameters"]["config"]["data"]["root"] = str(tmp_path / "data" / "synthetic")
    # The same gate, with a latency budget no loaded CI machine can miss: this test is about the
    # pipeline; the gate's budgets have their own tests in tests/ops.
    gate = yaml.safe_load((REPO / "configs" / "gate.yaml").read_text())
    gate["max_latency_ms"] = 600000.0
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump(gate))
    cfg["parameters"]["config"]["registry"]["gate_config"] = str(tmp_path / "gate.yaml")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_caches_data_steps(tmp_path):
    env = _env(tmp_path)
    config = _tiny_config(tmp_path)
    _run([sys.executable, "-m", "pipelines.stack"], env)
    _run([ZENML, "pipeline", "run", "pipelines.training.training_pipeline", "-c", str(config)], env)
    _run([ZENML, "pipeline", "run", "pipelines.training.training_pipeline", "-c", str(config)], env)
    query = _run([sys.executable, "-c", QUERY], env)
    result = json.loads(query.stdout.split("JSON:", 1)[1])

    second, first = result["runs"][0], result["runs"][1]
    expected_steps = {
        "ingest_data": ["manifest"],
        "validate_data": ["clean_manifest", "data_docs"],
        "train_cnn_teacher": ["cnn_teacher"],
        "train_vit_teacher": ["vit_teacher"],
        "distill_student": ["distill_diagnostics", "student"],
        "evaluate_student": ["test_metrics"],
        "register_student": ["promotion_decision"],
    }
    assert first["status"].endswith("completed")
    for name, outputs in expected_steps.items():
        assert first["steps"][name]["status"].endswith("completed"), (name, first["steps"][name])
        assert first["steps"][name]["outputs"] == outputs
    # Unchanged config: the data steps come from ZenML's cache on the second run.
    assert second["steps"]["ingest_data"]["status"].endswith("cached")
    assert second["steps"]["validate_data"]["status"].endswith("cached")

    # Curves and test metrics reached MLflow; the registry holds a champion student and teachers.
    keys = set(result["metric_keys"])
    assert {"test/top1", "test/top5", "test/params", "test/gflops"} <= keys
    assert any(k.startswith("student/") for k in keys) and any(k.startswith("cnn_teacher/") for k in keys)
    assert "champion" in result["registered"]["dtkd-student"]["aliases"]
    assert "challenger" in result["registered"]["dtkd-student"]["aliases"]
    assert "champion" in result["registered"]["dtkd-teacher-cnn"]["aliases"]
    assert "champion" in result["registered"]["dtkd-teacher-vit"]["aliases"]
