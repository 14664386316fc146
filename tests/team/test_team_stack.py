"""The team stack for real: PostgreSQL, an MLflow tracking server on it (basic auth, proxied
artifacts) and a ZenML server, started by `python -m pipelines.team_stack up` (make team-up); the
tiny pipeline, the CLI gate and concurrent promotes run against them over HTTP; `down` stops them.

Needs Debian's `postgresql` (make test installs it as root; .ci/run runs make test)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(cmd, env, timeout=1200, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def team():
    # Under /var/tmp, world-traversable: as root, PostgreSQL runs as the `postgres` user and must
    # reach its data directory (pytest's tmp dirs are private to root).
    root = Path(tempfile.mkdtemp(prefix="dtkd-team-", dir="/var/tmp"))
    root.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DTKD_LOCK"))}
    # ZENML_REPOSITORY_PATH: no ZenML repository, so the active stack lives in this store's own
    # config, not in the checkout's .zen/ (which other processes rewrite)
    env.update(DTKD_HOME=str(root / "home"), ZENML_CONFIG_PATH=str(root / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
               ZENML_REPOSITORY_PATH=str(root / "no-repository"),
               MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", ZENML_ENABLE_RICH_TRACEBACK="false",
               OMP_NUM_THREADS="2", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "pipelines.team_stack", "up"], env, timeout=600)
    started = time.perf_counter() - t0
    exports = _run([sys.executable, "-m", "dtkd_ops.services", "env"], env).stdout
    client = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
    try:
        yield {"root": root, "env": env, "client": {**env, **client}, "started_s": started, "uri": client["MLFLOW_TRACKING_URI"]}
    finally:
        _run([sys.executable, "-m", "pipelines.team_stack", "down"], env, check=False)
        status = _run([sys.executable, "-m", "dtkd_ops.services", "status"], env, check=False).stdout
        shutil.rmtree(root, ignore_errors=True)
        assert '"mlflow": false' in status and '"postgres": false' in status, status


def test_services_are_real_and_authenticated(team):
    import urllib.error
    import urllib.request

    assert team["uri"].startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as denied:  # no credentials, no data
        urllib.request.urlopen(urllib.request.Request(f"{team['uri']}/api/2.0/mlflow/experiments/search",
                                                      data=b"{}", method="POST"), timeout=10)
    assert denied.value.code == 401
    # the tracking store is PostgreSQL, not a file
    state = json.loads((team["root"] / "home" / "team" / "state.json").read_text())
    assert oct((team["root"] / "home" / "team" / "state.json").stat().st_mode & 0o777) == "0o600"
    import psycopg2

    conn = psycopg2.connect(team["client"]["DTKD_LOCK_URL"])
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'registered_models'")
        assert cur.fetchone()[0] == 1
    conn.close()
    assert state["pg_port"] != state["mlflow_port"]
    out = _run([BIN / "zenml", "status"], team["env"])
    zenml = out.stdout + out.stderr  # the status table goes to the terminal's console, either stream
    assert "dtkd_team" in zenml and "127.0.0.1" in zenml, zenml


def test_the_pipeline_gate_and_promote_run_against_the_servers(team, tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["parameters"]["config"]["data"]["root"] = str(tmp_path / "videos")
    gate = yaml.safe_load((REPO / "configs" / "gate.yaml").read_text())
    gate["max_latency_ms"] = 600000.0  # this test is about the servers; the budgets have their own
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump(gate))
    cfg["parameters"]["config"].setdefault("registry", {})["gate_config"] = str(tmp_path / "gate.yaml")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    # the pipeline process gets no MLflow variables: the stack's tracker (and its secret) says where
    _run([BIN / "zenml", "pipeline", "run", "pipelines.training.training_pipeline", "-c", tmp_path / "tiny.yaml"],
         team["env"])

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=team["uri"], registry_uri=team["uri"])
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    os.environ.update({k: team["client"][k] for k in names})  # models:/ URIs resolve through them
    try:
        student = client.get_registered_model("dtkd-student")
        assert {k: int(v) for k, v in student.aliases.items()} == {"champion": 1, "challenger": 1}
        for role in ("cnn", "vit"):
            assert "champion" in client.get_registered_model(f"dtkd-teacher-{role}").aliases
        version = client.get_model_version("dtkd-student", "1")
        assert version.tags["dtkd.gate.decision"] == "promoted"
        run = client.get_run(version.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
        before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(team["uri"])
        mlflow.set_registry_uri(team["uri"])
        try:
            local = mlflow.artifacts.download_artifacts("models:/dtkd-student@champion", dst_path=str(tmp_path / "m"))
        finally:
            mlflow.set_tracking_uri(before[0])
            mlflow.set_registry_uri(before[1])
        assert Path(local, "MLmodel").is_file()
    finally:
        for k in names:
            os.environ.pop(k, None)

    # the CLI gate over HTTP: the champion against itself is no significant change (exit 3)
    out = _run([sys.executable, "-m", "dtkd_ops.cli", "gate", "--model", "dtkd-student", "--candidate", "1"],
               team["client"], check=False)
    assert out.returncode == 3, out.stdout + out.stderr


def test_concurrent_promotes_against_the_server_have_exactly_one_winner(team):
    """Three `dtkd promote` processes at once, each with a candidate that beats the champion, on the
    shared registry: the PostgreSQL advisory lock (DTKD_LOCK_URL) lets exactly one win, twice."""
    sys.path.insert(0, str(REPO / "bench"))
    import promote_race

    from dtkd_ops.registry import ModelRegistry

    env = {**team["client"], "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")])}
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update({k: team["client"][k] for k in saved})
    try:
        reg = ModelRegistry(team["uri"])
        # one round here; 20 rounds are bench/promote_race.py's (docs/mlops.md)
        reg.set_champion("student", promote_race._register(reg, right=False))
        candidates = [promote_race._register(reg, right=True) for _ in range(3)]
        procs = [subprocess.Popen([sys.executable, "-m", "dtkd_ops.cli", "promote", "--model", "student",
                                   "--candidate", str(v), "--gate-config", str(REPO / "configs" / "gate.yaml"),
                                   "--evaluator", "promote_race:evaluator_factory"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for v in candidates]
        results = [(v, p.wait(timeout=600), p.stdout.read()) for v, p in zip(candidates, procs)]
        winners = [v for v, code, _ in results if code == 0]
        assert len(winners) == 1, results
        assert all(code in (3, 6) for v, code, _ in results if v not in winners), results
        assert reg.get_champion("student").version == winners[0]
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
