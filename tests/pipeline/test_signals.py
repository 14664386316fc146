"""One stop signal stops a real `zenml pipeline run` (issue 13, item 2): the running step ends
(its checkpoint kept), no later step starts, nothing is registered after the signal, and the run
is failed/stopped in ZenML and not left RUNNING in MLflow."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from test_training_pipeline import REPO, ZENML, Home, _run

pytestmark = pytest.mark.slow

STATE = r"""
import json
import mlflow
from zenml.client import Client
from dtkd_ops.home import tracking_uri

run = Client().list_pipeline_runs(sort_by="desc:created", size=1).items[0]
mc = mlflow.MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())
exp = mc.get_experiment_by_name("dtkd")
print("JSON:" + json.dumps({
    "status": str(run.status),
    "steps": {name: str(s.status) for name, s in run.steps.items()},
    "registered": sorted(m.name for m in mc.search_registered_models()),
    "mlflow_status": sorted({r.info.status for r in mc.search_runs([exp.experiment_id])}) if exp else [],
}))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_one_signal_during_a_teacher_step_stops_the_run(tmp_path, sig):
    home = Home(tmp_path)
    cfg = yaml.safe_load(home.config.read_text())
    models = cfg["parameters"]["config"]["models"]
    for key in ("cnn_teacher", "vit_teacher", "student"):  # no pretraining here; a long CNN teacher step to interrupt
        models[key].pop("pretrained", None)
    models["cnn_teacher"].setdefault("training", {})["epochs"] = 200
    home.config.write_text(yaml.safe_dump(cfg))
    _run([sys.executable, "-m", "pipelines.stack"], home.env)
    home.init_data_repo()

    proc = subprocess.Popen([ZENML, "pipeline", "run", "pipelines.training.training_pipeline", "-c", str(home.config)],
                            cwd=REPO, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # never a full pipe
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("train_cnn_teacher" in line and "has started" in line for line in list(output)):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(output[-50:])
            time.sleep(0.5)
        # inside the training loop, past its first checkpoint (a fixed sleep raced a loaded machine)
        ckpts = tmp_path / "home" / "checkpoints" / "cnn_teacher"
        while not list(ckpts.rglob("ckpt-*.pt")):
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint before the deadline"
            time.sleep(0.5)
        time.sleep(1)
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=120)
        waited = time.monotonic() - sent
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(output)
    assert proc.returncode != 0, log[-4000:]
    assert waited < 30, f"exited {waited:.0f} s after the signal"
    state = json.loads(_run([sys.executable, "-c", STATE], home.env).stdout.split("JSON:", 1)[1])
    assert state["status"].split(".")[-1].lower() in ("failed", "stopped"), state
    assert "train_vit_teacher" not in state["steps"] or not state["steps"]["train_vit_teacher"].endswith("completed"), state
    assert state["registered"] == [], state  # nothing registered after (or before) the signal
    assert "RUNNING" not in state["mlflow_status"], state
    # The interrupted step kept its checkpoint: a rerun resumes instead of starting over.
    assert list((tmp_path / "home" / "checkpoints" / "cnn_teacher").rglob("ckpt-*.pt")), log[-4000:]
