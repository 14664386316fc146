"""End to end: `zenml pipeline run` on a tiny config in an isolated ZenML + MLflow home.

Everything is real: the ZenML local orchestrator and sqlite store, the MLflow sqlite tracking store
and registry, Great Expectations, a DVC repo tracking the PyAV-encoded videos. The runs and the
queries happen in subprocesses so that this module's ZenML/MLflow homes never leak into other tests.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dtkd.config import validate_config
from dtkd.data.synthetic import generate_synthetic

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ZENML = str(BIN / "zenml")
DVC = str(BIN / "dvc")

QUERY = r"""
import json
import mlflow
from zenml.client import Client
from dtkd_ops.home import tracking_uri

client = Client()
out = {"runs": []}
for run in client.list_pipeline_runs(sort_by="desc:created", size=20).items:
    steps = {name: {"status": str(s.status), "outputs": sorted(s.outputs)} for name, s in run.steps.items()}
    entry = {"pipeline": run.pipeline.name, "status": str(run.status), "steps": steps}
    if "check_data_version" in run.steps:
        entry["retrain_decision"] = run.steps["check_data_version"].outputs["retrain_decision"][0].load()
    out["runs"].append(entry)
mc = mlflow.MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())
out["registered"] = {
    rm.name: {"aliases": dict(rm.aliases),
              "versions": {mv.version: dict(mv.tags) for mv in mc.search_model_versions(f"name='{rm.name}'")}}
    for rm in mc.search_registered_models()
}
exp = mc.get_experiment_by_name("dtkd")
out["metric_keys"] = sorted({k for r in mc.search_runs([exp.experiment_id]) for k in r.data.metrics})
out["lr_params"] = {k: v for r in mc.search_runs([exp.experiment_id]) for k, v in r.data.params.items() if k.endswith("train.lr")}
out["pretrained_params"] = {k: v for r in mc.search_runs([exp.experiment_id]) for k, v in r.data.params.items() if k.endswith(".pretrained")}
out["artifacts"] = sorted({a.path for r in mc.search_runs([exp.experiment_id]) for a in mc.list_artifacts(r.info.run_id)})
validated = [r for r in mc.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
             if any(a.path == "data_docs" for a in mc.list_artifacts(r.info.run_id))]
if validated:
    run = validated[0]
    out["validate_run"] = {"tags": dict(run.data.tags),
                           "inputs": [{"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source}
                                      for d in run.inputs.dataset_inputs]}
    import os
    if os.environ.get("DOCS_OUT"):
        out["data_docs_dir"] = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="data_docs", dst_path=os.environ["DOCS_OUT"], tracking_uri=tracking_uri())
zmodel = client.get_model("dtkd-student")
out["zenml_model_versions"] = [
    {"name": v.name, "stage": str(v.stage), "artifacts": sorted(v.data_artifact_ids) + sorted(v.model_artifact_ids),
     "mlflow": (v.run_metadata or {}).get("mlflow")}
    for v in client.list_model_versions(zmodel.id, size=50).items
]
print("JSON:" + json.dumps(out, default=str))
"""


def _run(cmd: list, env: dict, cwd: Path = REPO, timeout: int = 1200) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out


class Home:
    """An isolated ZenML + MLflow home, a DVC data repo, and the tiny run config pointing at both."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_repo = root / "data_repo"
        # Nothing MLflow-related leaks in from the calling process: the stack decides the store.
        self.env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        self.env.update(
            ZENML_CONFIG_PATH=str(root / "zenml"),
            # no ZenML repository (the checkout's .zen/ names another store's active stack, and
            # parallel tests or a user's `make run` rewrite it): the active stack is this store's
            ZENML_REPOSITORY_PATH=str(root / "no-repository"),
            DTKD_HOME=str(root / "home"),
            DTKD_DATA_REPO=str(self.data_repo),
            ZENML_ANALYTICS_OPT_IN="false",
            MLFLOW_DISABLE_TELEMETRY="true",
            DVC_NO_ANALYTICS="1",
            ZENML_ENABLE_RICH_TRACEBACK="false",
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        )
        cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
        dtkd_cfg = cfg["parameters"]["config"]
        dtkd_cfg["data"]["root"] = str(self.data_repo / "data" / "synthetic")
        # Teachers and student start from the backbones the pretraining pipeline registers, by
        # reference, as in configs/default.yaml.
        dtkd_cfg["pretraining"]["data"]["root"] = str(self.data_repo / "data" / "pretrain")
        dtkd_cfg["pretraining"]["roles"] = ["cnn", "vit", "student"]
        for role in ("cnn", "vit"):
            dtkd_cfg["models"][f"{role}_teacher"]["pretrained"] = f"models:/dtkd-pretrained-{role}@pretrained"
        dtkd_cfg["models"]["student"]["pretrained"] = "models:/dtkd-pretrained-student@pretrained"
        # The real gate, with a latency budget no loaded CI machine can miss: this module is about
        # the pipeline; the gate's budgets have their own tests in tests/ops.
        gate = yaml.safe_load((REPO / "configs" / "gate.yaml").read_text())
        gate["max_latency_ms"] = 600000.0
        (root / "gate.yaml").write_text(yaml.safe_dump(gate))
        dtkd_cfg.setdefault("registry", {})["gate_config"] = str(root / "gate.yaml")
        # Every generator knob, the library defaults the config does not restate included.
        self.synthetic = validate_config(dtkd_cfg).data.synthetic.model_dump()
        self.corpus = validate_config(dtkd_cfg).pretraining.data.synthetic.model_dump()
        self.config = root / "tiny.yaml"
        self.config.write_text(yaml.safe_dump(cfg))

    def init_data_repo(self) -> None:
        """A git + DVC repo whose tracked data is exactly the tiny config's synthetic set."""
        self.data_repo.mkdir(parents=True)
        _run(["git", "init", "-q"], self.env, cwd=self.data_repo)
        _run([DVC, "init", "-q"], self.env, cwd=self.data_repo)
        s = self.synthetic
        _run(
            [sys.executable, "-m", "dtkd.data.synthetic", "--root", self.data_repo / "data" / "synthetic",
             "--num-classes", s["num_classes"], "--train", s["clips_per_class"]["train"],
             "--test", s["clips_per_class"]["test"], "--frames", s["frames"], "--size", s["size"],
             "--fps", s["fps"], "--seed", s["seed"]],
            self.env,
        )
        # the pretraining corpus is versioned too: pretrained backbones carry its data version
        generate_synthetic(self.data_repo / "data" / "pretrain", **self.corpus)
        _run([DVC, "add", "-q", "data/pretrain"], self.env, cwd=self.data_repo)
        self.dvc_add()

    def dvc_add(self) -> None:
        _run([DVC, "add", "-q", "data/synthetic"], self.env, cwd=self.data_repo)

    def zenml_run(self, pipeline: str) -> None:
        _run([ZENML, "pipeline", "run", pipeline, "-c", self.config], self.env)

    def query(self, **env: str) -> dict:
        # a script file, not `python -c`: without a ZenML repository ZenML takes the main module's
        # folder as the source root, and loading an artifact needs one
        script = self.root / "query.py"
        script.write_text(QUERY)
        out = _run([sys.executable, script], {**self.env, "PYTHONPATH": str(REPO), **env})
        return json.loads(out.stdout.split("JSON:", 1)[1])


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    h = Home(tmp_path_factory.mktemp("pipeline"))
    _run([sys.executable, "-m", "pipelines.stack"], h.env)
    h.init_data_repo()
    # as `make run` runs them: both pipelines in one process (pipelines.run)
    _run([sys.executable, "-m", "pipelines.run", "-c", h.config, "pipelines.pretraining.pretraining_pipeline",
          "pipelines.training.training_pipeline"], h.env)
    return h


EXPECTED_STEPS = {
    "ingest_data": ["manifest"],
    "validate_data": ["clean_manifest", "data_docs"],
    "train_cnn_teacher": ["cnn_teacher"],
    "train_vit_teacher": ["vit_teacher"],
    "distill_student": ["distill_diagnostics", "student"],
    "evaluate_student": ["test_metrics"],
    "register_student": ["promotion_decision"],
}


def test_pipeline_runs_end_to_end_and_second_run_is_cached(home):
    home.zenml_run("pipelines.training.training_pipeline")
    result = home.query()
    second, first = result["runs"][0], result["runs"][1]

    assert first["status"].endswith("completed")
    for name, outputs in EXPECTED_STEPS.items():
        assert first["steps"][name]["status"].endswith("completed"), (name, first["steps"][name])
        assert first["steps"][name]["outputs"] == outputs
    # Unchanged config and data: ingest reads the data again (it is never cached) and finds the
    # same contents, so every step after it is served from ZenML's cache, except register_student:
    # it writes to the registry, so it is never cached (issue 12): it registers the same student
    # again, and the gate, measuring both on the same clips, finds no significant change.
    always = {"ingest_data", "register_student"}
    for name in always:
        assert second["steps"][name]["status"].endswith("completed"), (name, second["steps"][name])
    assert all(step["status"].endswith("cached") for name, step in second["steps"].items() if name not in always), \
        second["steps"]

    # Curves, test metrics, the confusion matrix and Data Docs reached MLflow.
    keys = set(result["metric_keys"])
    assert {"test/top1", "test/top5", "test/params", "test/gflops", "test/latency_ms"} <= keys
    assert any(k.startswith("student/") for k in keys) and any(k.startswith("cnn_teacher/") for k in keys)
    assert {"confusion_matrix.png", "data_docs"} <= set(result["artifacts"])
    # configs/tiny.yaml gives the ViT teacher its own lr (models.vit_teacher.training).
    assert float(result["lr_params"]["vit_teacher.train.lr"]) == 0.001
    assert float(result["lr_params"]["cnn_teacher.train.lr"]) == 0.003

    # The registry holds a champion student (first candidate within budget) and both teachers,
    # each version carrying the DVC data version of the data repo.
    student = result["registered"]["dtkd-student"]
    assert {k: int(v) for k, v in student["aliases"].items()} == {"champion": 1, "challenger": 2}
    assert student["versions"]["2"]["dtkd.gate.decision"] == "no_change", student["versions"]["2"]
    tags = student["versions"][str(student["aliases"]["champion"])]
    assert tags["dtkd.data.dvc_hash"] not in ("", "none")
    assert len(tags["mlflow.source.git.commit"].split("-")[0]) == 40  # lineage: the code's commit
    for role in ("cnn", "vit"):
        assert "champion" in result["registered"][f"dtkd-teacher-{role}"]["aliases"]

    # Model Control Plane: the run's ZenML model version links its artifacts and the MLflow
    # version, and its stage mirrors the alias (champion -> production).
    production = [v for v in result["zenml_model_versions"] if v["stage"].endswith("production")]
    assert len(production) == 1 and production[0]["artifacts"]
    assert production[0]["mlflow"]["version"] == int(student["aliases"]["champion"])
    assert production[0]["name"] == "v1"  # named after the MLflow version it registered
    staging = [v for v in result["zenml_model_versions"] if v["stage"].endswith("staging")]
    assert [v["mlflow"]["version"] for v in staging] == [2]

    # Lineage: the validated dataset as an MLflow input (source and content digest), and the Data
    # Docs as a whole site in MLflow, which a real browser renders.
    inputs = result["validate_run"]["inputs"]
    assert inputs and inputs[0]["digest"] and "synthetic" in inputs[0]["source"]
    assert result["validate_run"]["tags"]["dtkd.data.dvc_hash"] not in ("", "none")


def test_data_docs_in_mlflow_open_in_a_headless_browser(home, tmp_path):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: .ci/run installs Debian's chromium package"
    docs = Path(home.query(DOCS_OUT=str(tmp_path))["data_docs_dir"])
    index = docs / "index.html"
    assert index.is_file() and len(list(docs.rglob("*.html"))) > 1  # the site, not one page
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    # the rendered index lists the validation runs of the gate's three GX suites
    assert "Data Docs" in dom or "Validation" in dom, dom[:2000]
    assert "videos" in dom and "class_counts" in dom, dom[:4000]


def test_model_stages_follow_the_mlflow_champion_on_a_rollback(home):
    """The champion pointer of record is MLflow's; `python -m pipelines.model_stages` mirrors it in
    ZenML (what `make rollback` runs after `dtkd rollback`)."""
    import mlflow

    def production() -> list:
        result = home.query()
        return [v["mlflow"]["version"] for v in result["zenml_model_versions"] if v["stage"].endswith("production")]

    uri = json.loads(_run([sys.executable, "-c", "import json; from dtkd_ops.home import tracking_uri; "
                           "print(json.dumps(tracking_uri()))"], home.env).stdout)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    before = production()
    assert len(before) == 1
    other = 2 if before[0] == 1 else 1
    client.set_registered_model_alias("dtkd-student", "champion", str(other))  # a move made outside ZenML
    _run([sys.executable, "-m", "pipelines.model_stages", "sync"], home.env)
    assert production() == [other]
    client.set_registered_model_alias("dtkd-student", "champion", str(before[0]))
    _run([sys.executable, "-m", "pipelines.model_stages", "sync"], home.env)
    assert production() == before


def test_teachers_and_student_start_from_the_registered_pretrained_backbones(home):
    result = home.query()
    pretraining = [r for r in result["runs"] if r["pipeline"] == "pretraining_pipeline"]
    assert pretraining and pretraining[-1]["status"].endswith("completed")
    assert set(pretraining[-1]["steps"]) == {"ingest_pretraining_corpus", "validate_pretraining_corpus",
                                             "pretrain_cnn", "pretrain_vit", "pretrain_student"}
    for role, param in (("cnn", "cnn_teacher.model.pretrained"), ("vit", "vit_teacher.model.pretrained"),
                        ("student", "student.student.pretrained")):
        registered = result["registered"][f"dtkd-pretrained-{role}"]
        assert {k: int(v) for k, v in registered["aliases"].items()} == {"pretrained": 1}
        tags = registered["versions"]["1"]
        assert tags["dtkd.role"] == f"pretrained_{role}" and tags["dtkd.data.dvc_hash"] not in ("", "none")
        assert tags["dtkd.pretrain.key"]
        # The alias was pinned to v1 and fetched as a state-dict file the model started from.
        fetched = Path(result["pretrained_params"][param]).name
        assert re.fullmatch(rf"dtkd-pretrained-{role}-v1-[0-9a-f]{{12}}\.pt", fetched), (param, fetched)

    # Pretraining again with nothing changed registers nothing new.
    home.zenml_run("pipelines.pretraining.pretraining_pipeline")
    again = home.query()
    assert all({k: int(v) for k, v in again["registered"][f"dtkd-pretrained-{r}"]["aliases"].items()} == {"pretrained": 1}
               for r in ("cnn", "vit"))
    assert len(again["registered"]["dtkd-pretrained-cnn"]["versions"]) == 1


def test_retraining_skips_unchanged_data_and_retrains_when_it_changes(home):
    versions_before = len(home.query()["zenml_model_versions"])
    home.zenml_run("pipelines.retraining.retraining_pipeline")
    result = home.query()
    skipped = result["runs"][0]
    assert skipped["pipeline"] == "retraining_pipeline"
    assert skipped["retrain_decision"]["retrain"] is False, skipped["retrain_decision"]
    assert set(skipped["steps"]) == {"check_data_version"}
    assert len(result["zenml_model_versions"]) == versions_before  # a skipping run opens no model version

    # New data version, and the stale-data case of issue 13: one video gets other contents under
    # its old name (its frames mirrored, re-encoded) and `dvc add` records it.
    from dtkd.data import probe_video, read_frames, write_video

    video = sorted((home.data_repo / "data" / "synthetic").rglob("*.avi"))[0]
    before = {tags["dtkd.dataset_fingerprint"] for tags in home.query()["registered"]["dtkd-student"]["versions"].values()}
    info = probe_video(video)
    frames = read_frames(video, range(info["frames"])).numpy()
    write_video(video, frames[:, :, ::-1].copy(), fps=round(info["fps"]))
    home.dvc_add()
    home.zenml_run("pipelines.retraining.retraining_pipeline")
    result = home.query()
    retrained = result["runs"][0]
    assert retrained["retrain_decision"]["retrain"] is True
    assert "data changed" in retrained["retrain_decision"]["reason"]
    assert set(EXPECTED_STEPS) <= set(retrained["steps"])
    # New contents: nothing after ingest is served from the cache or resumed from a checkpoint.
    for name in EXPECTED_STEPS:
        assert retrained["steps"][name]["status"].endswith("completed"), (name, retrained["steps"][name])
    new_hash = retrained["retrain_decision"]["dvc_hash"]
    versions = result["registered"]["dtkd-student"]["versions"]
    newest = versions[str(max(int(v) for v in versions))]
    assert newest["dtkd.data.dvc_hash"] == new_hash
    assert newest["dtkd.dataset_fingerprint"] not in before
    # one ZenML model version for the retraining run, named after the MLflow version it registered
    assert len(result["zenml_model_versions"]) == versions_before + 1
    assert f"v{max(int(v) for v in versions)}" in [v["name"] for v in result["zenml_model_versions"]]


def test_local_orchestrator_refuses_a_schedule_with_a_clear_message(home):
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.schedule", "-c", str(home.config)],
        cwd=REPO, env=home.env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "cannot run schedules" in out.stderr and "Kubernetes" in out.stderr


def test_schedule_overlay_without_cron_is_refused(tmp_path):
    from pipelines.schedule import ScheduleError, merged_schedule_config

    (tmp_path / "s.yaml").write_text("schedule: {}\n")
    with pytest.raises(ScheduleError, match="cron_expression is missing"):
        merged_schedule_config(str(REPO / "configs" / "default.yaml"), str(tmp_path / "s.yaml"))
    merged = merged_schedule_config(str(REPO / "configs" / "default.yaml"), str(REPO / "configs" / "retrain-schedule.yaml"))
    assert merged["schedule"]["cron_expression"] == "0 3 * * 1"
    assert merged["parameters"]["config"]["models"]["student"]["name"] == "x3d_tiny"
