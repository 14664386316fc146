"""`dtkd export` end to end: a registered x3d_tiny (the default student's architecture) to
TorchScript and ONNX, checked on its logged test clips, logged to a new MLflow run on a sqlite
store; a perturbed export fails and logs nothing."""
from __future__ import annotations

import json

import pytest
import torch

from dtkd_ops.cli import EXIT_ERROR, EXIT_FAILED, EXIT_OK, main
from dtkd_ops.registry import ModelRegistry

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

OVERRIDES = {"spatial_strides": [2, 2, 2, 1]}  # configs/default.yaml's student
FAST = ["--repeats", "2", "--warmup", "1"]


@pytest.fixture
def registered(tracking_uri, synthetic_manifest, tmp_path):
    """v1 of 'student': x3d_tiny at 8 x 32^2, registered as the pipeline does (input spec, rebuild
    options, gate tags and the test manifest as an artifact)."""
    from dtkd import models
    from dtkd.config import EvalConfig
    from dtkd_ops.evaluation import gate_tags

    registry = ModelRegistry(tracking_uri)
    test_only = tmp_path / "gate" / "test_manifest.parquet"
    test_only.parent.mkdir()
    synthetic_manifest[synthetic_manifest["split"] == "test"].to_parquet(test_only, index=False)
    spec = models.get_spec("x3d_tiny")
    view = {"model_name": "x3d_tiny", "frames": 8, "sampling_rate": 2, "crop_size": 32,
            "mean": list(spec.mean), "std": list(spec.std)}
    torch.manual_seed(0)
    model = models.build("x3d_tiny", 3, frames=8, crop_size=32, **OVERRIDES)
    registry.register_candidate(model, registered_name="student", metrics={"top1": 0.5}, dataset_fingerprint="x",
                                input_spec=view, build_options=OVERRIDES, artifacts={"gate": test_only.parent},
                                tags=gate_tags(synthetic_manifest, EvalConfig()))
    return registry


def test_export_checks_times_and_logs_the_files_with_the_version(registered, tmp_path, capsys):
    out_json = tmp_path / "export.json"
    code = main(["export", "--tracking-uri", registered.tracking_uri, "--model", "student", "--version", "challenger",
                 "--out", str(tmp_path / "exports"), "--int8", "--json", str(out_json), *FAST])
    printed = capsys.readouterr()
    assert code == EXIT_OK, printed.err
    report = json.loads(out_json.read_text())
    assert report["ok"] and report["clips"] == 6 and report["opset"] == 18
    for fmt in ("torchscript", "onnx"):
        assert report["parity"][fmt]["max_abs_diff"] <= 1e-4 and report["parity"][fmt]["top1_agreement"] == 1.0
    assert set(report["latency_ms"]) == {"pytorch", "torchscript", "onnxruntime"}
    assert all(v > 0 for v in report["latency_ms"].values())
    assert {"top1_fp32", "top1_int8", "top1_delta"} <= set(report["int8"])
    assert "onnxruntime" in printed.out and "top-1 agreement 1.0000 ok" in printed.out

    # a new run tagged with the version holds the files; the version points back at it
    ref = registered.get_version("student", 1)
    run_id = ref.tags["dtkd.export.run_id"]
    assert run_id == report["run_id"] and run_id != ref.run_id
    run = registered.client.get_run(run_id)
    assert run.data.tags["dtkd.export.model"] == "student" and run.data.tags["dtkd.export.version"] == "1"
    assert run.data.tags["dtkd.export.source_run"] == ref.run_id and run.info.status == "FINISHED"
    assert run.data.metrics["onnx_top1_agreement"] == 1.0 and run.data.metrics["latency_ms_onnxruntime"] > 0
    logged = {f.path for f in registered.client.list_artifacts(run_id, "export")}
    assert logged == {"export/model.pt", "export/model.onnx", "export/report.json"}
    assert "metrics" not in {f.path for f in registered.client.list_artifacts(ref.run_id)}
    assert set(registered.client.get_run(ref.run_id).data.metrics) == {"top1"}, "the registering run is untouched"

    # the logged ONNX file runs with a batch of another size than the trace's
    import mlflow

    from dtkd.eval.export import OnnxModel

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="export/model.onnx",
                                               tracking_uri=registered.tracking_uri, dst_path=str(tmp_path / "dl"))
    assert OnnxModel(path)(torch.zeros(3, 3, 8, 32, 32)).shape == (3, 3)


def test_a_perturbed_export_fails_with_its_figures_and_logs_nothing(registered, tmp_path, capsys, monkeypatch):
    from dtkd.eval import export as ex

    real = ex.export_onnx

    def perturbed(model, example, path, **kw):  # a conversion that moved one logit by 0.5
        import copy

        model = copy.deepcopy(model)
        with torch.no_grad():
            model.blocks[-1].proj.bias.add_(torch.tensor([0.0, 0.5, 0.0]))
        return real(model, example, path, **kw)

    monkeypatch.setattr(ex, "export_onnx", perturbed)
    code = main(["export", "--tracking-uri", registered.tracking_uri, "--model", "student", "--version", "1",
                 "--out", str(tmp_path / "exports"), *FAST])
    printed = capsys.readouterr()
    assert code == EXIT_FAILED
    assert "max abs diff 0.5 (<= 0.0001)" in printed.out and "FAILED" in printed.out
    assert "nothing logged" in printed.err
    assert "dtkd.export.run_id" not in registered.get_version("student", 1).tags
    runs = registered.client.search_runs([registered.ensure_experiment()])
    assert not [r for r in runs if "dtkd.export.model" in r.data.tags]
    assert json.loads((tmp_path / "exports" / "student-v1" / "report.json").read_text())["ok"] is False


def test_errors_exit_2_and_name_the_cause(tracking_uri, capsys):
    assert main(["export", "--tracking-uri", tracking_uri, "--model", "nobody"]) == EXIT_ERROR
    assert "registered model 'nobody': alias 'champion' not found" in capsys.readouterr().err


def test_a_multi_head_version_is_checked_per_head(tracking_uri, tmp_path, capsys):
    """An EPIC-style verb + noun student (the fixture's layout): the report, the printout and the
    export run carry each head's top-1 agreement beside the all-heads one."""
    from dtkd import models
    from dtkd.config import EvalConfig
    from dtkd.data import build_manifest
    from dtkd.data.epic import write_epic_fixture
    from dtkd.data.manifest import heads_of
    from dtkd_ops.evaluation import gate_tags

    root = write_epic_fixture(tmp_path / "epic", segments_per_video=6, segment_frames=16, size=32)
    manifest = build_manifest("epic_kitchens100", root)
    heads = heads_of(manifest)
    split = sorted(set(manifest["split"]) - {"train"})[0]
    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    spec = models.get_spec("x3d_tiny")
    view = {"model_name": "x3d_tiny", "frames": 8, "sampling_rate": 2, "crop_size": 32,
            "mean": list(spec.mean), "std": list(spec.std)}
    torch.manual_seed(0)
    model = models.build("x3d_tiny", heads.total, frames=8, crop_size=32, **OVERRIDES)
    registry = ModelRegistry(tracking_uri)
    registry.register_candidate(model, registered_name="epic", metrics={"top1": 0.5}, dataset_fingerprint="x",
                                input_spec=view, build_options=OVERRIDES, tags=gate_tags(manifest, EvalConfig()))
    out_json = tmp_path / "export.json"
    code = main(["export", "--tracking-uri", tracking_uri, "--model", "epic", "--version", "1", "--split", split,
                 "--manifest", str(tmp_path / "manifest.parquet"), "--out", str(tmp_path / "exports"),
                 "--json", str(out_json), *FAST])
    printed = capsys.readouterr()
    assert code == EXIT_OK, printed.err
    report = json.loads(out_json.read_text())
    for fmt in ("torchscript", "onnx"):
        assert report["parity"][fmt]["head_agreement"] == {"verb": 1.0, "noun": 1.0}
    assert "top-1 agreement 1.0000, verb 1.0000, noun 1.0000 ok" in printed.out
    metrics = registry.client.get_run(report["run_id"]).data.metrics
    assert metrics["onnx_verb_top1_agreement"] == 1.0 and metrics["torchscript_noun_top1_agreement"] == 1.0
