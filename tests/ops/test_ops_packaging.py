"""Deployable registered models (issue 12, item 5): signature, input example, requirements, the
pt2 serialization, dtkd's rebuild and the model card. The clean-venv load is
test_ops_packaging_clean_env.py (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dtkd import models
from dtkd.config import ModelRef
from dtkd_ops import packaging
from dtkd_ops.registry import CHALLENGER, ModelRegistry, sqlite_uri

NAME = "dtkd-student"
REF = ModelRef(name="x3d_tiny", frames=4, crop_size=32)
CLASSES = 3


# ----------------------------------------------------------------------------- pieces, no MLflow store


def test_example_clips_are_a_batch_of_normalised_clips_with_short_json():
    clips = packaging.example_clips(REF.input_spec())
    assert clips.shape == (packaging.EXAMPLE_BATCH, 3, 4, 32, 32) and clips.dtype == np.float32
    assert np.all(clips * 4 == np.round(clips * 4)) and clips.min() >= -2 and clips.max() <= 2
    assert max(len(json.dumps(float(v))) for v in clips.ravel()) <= 5  # "-1.25", not "-1.2499999523"
    assert np.array_equal(clips, packaging.example_clips(REF.input_spec()))  # same example every time


def test_example_clips_say_what_is_missing():
    with pytest.raises(packaging.PackagingError, match="frames/crop_size.*input_example="):
        packaging.example_clips({"model_name": "x3d_tiny"})


def test_architecture_is_the_build_call_without_weights_or_data_view():
    options = {"pretrained": "models:/p@x", "sampling_rate": 2, "dropout": 0.3}
    arch = packaging.architecture_of(REF.input_spec(), options, CLASSES)
    options = {"frames": 4, "crop_size": 32, "dropout": 0.3}
    assert arch == {"name": "x3d_tiny", "num_classes": CLASSES, "options": options}
    assert packaging.architecture_of({"frames": 4, "crop_size": 8}, None, CLASSES) is None


def test_requirements_are_the_consumers_not_dtkds():
    reqs = packaging.model_requirements()
    assert [r.split("==")[0] for r in reqs] == ["mlflow", "torch", "numpy"]
    assert all("==" in r and "+" not in r for r in reqs)  # pinned, no local build tag (+cu130)


def test_prepare_needs_a_dtkd_model_name_or_an_example():
    assert packaging.prepare(nn.Linear(4, 2), input_spec={"frames": 4, "crop_size": 8}) is None
    package = packaging.prepare(nn.Linear(4, 2), input_example=np.zeros((2, 4), np.float32))
    assert package.num_classes == 2 and package.architecture is None
    assert package.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 4)


def test_prepare_refuses_a_model_that_does_not_return_logits():
    with pytest.raises(packaging.PackagingError, match=r"must return one \(batch, classes\) logits"):
        packaging.prepare(nn.Identity(), input_spec=REF.input_spec())


def test_prepare_leaves_the_callers_model_as_it_was():
    model = models.build("x3d_tiny", CLASSES, frames=4, crop_size=32).train()
    package = packaging.prepare(model, input_spec=REF.input_spec())
    assert model.training and not package.model.training and package.model is not model


def test_verify_names_the_difference_when_the_loaded_model_predicts_otherwise():
    torch.manual_seed(0)
    package = packaging.prepare(nn.Linear(4, 2), input_example=np.ones((2, 4), np.float32))
    other = nn.Linear(4, 2)
    with pytest.raises(packaging.PackagingError, match="max abs logit difference .* not registered"):
        packaging.verify_loaded(package, other)

    class FixedBatch(nn.Module):  # what an export that baked in the batch size would do
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x[:packaging.EXAMPLE_BATCH])

    with pytest.raises(packaging.PackagingError, match="is the batch axis dynamic"):
        packaging.verify_loaded(package, FixedBatch(package.model))


def test_inference_only_graph_tolerates_eval_but_not_training():
    graph = torch.export.export(nn.Linear(4, 2).eval(), (torch.zeros(2, 4),)).module()
    graph = packaging.inference_only(graph)
    assert graph.eval() is graph and graph.train(False) is graph and not graph.training
    with pytest.raises(NotImplementedError, match="inference only"):
        graph.train()


def test_model_card_states_data_teachers_method_and_metrics():
    card = packaging.model_card(
        registered_name=NAME, role="student", metrics={"top1": 0.1875, "params": 12345.0},
        params={"student": "x3d_tiny", "method": "dtkd"},
        tags={"dtkd.data.dvc_hash": "md5:abc", "dtkd.data.git_rev": "1234567"},
        dataset_fingerprint="fp-1", teachers={"cnn": "x3d_tiny_m", "vit": "mvit_tiny"},
        input_spec=REF.input_spec(), package=None, requirements=["mlflow==3"])
    for text in ("# dtkd-student (student)", "**Method**: dtkd", "cnn: x3d_tiny_m, vit: mvit_tiny",
                 "DVC `md5:abc`", "git `1234567`", "fingerprint `fp-1`", "| top1 | 0.1875 |",
                 "| params | 12345 |", "(batch, 3, 4, 32, 32)", "pickle"):
        assert text in card, text
    bare = packaging.model_card(registered_name="m", role=None, metrics={}, params={}, tags={},
                                dataset_fingerprint="d", teachers=None, input_spec=None, package=None,
                                requirements=[])
    assert "**Teachers**: none" in bare and "not tracked" in bare and "(none logged)" in bare
    teacher = packaging.model_card(registered_name="t", role="cnn_teacher", metrics={}, params={}, tags={},
                                   dataset_fingerprint="d", teachers=None, input_spec=None, package=None,
                                   requirements=[])
    assert "**Method**: one-model training on labels (no distillation)" in teacher


# ----------------------------------------------------------------------------- one real registration


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """x3d_tiny registered as the pipeline registers a student, in a real sqlite store."""
    uri = sqlite_uri(tmp_path_factory.mktemp("store") / "mlflow.db")
    registry = ModelRegistry(uri)
    torch.manual_seed(0)
    model = models.build("x3d_tiny", CLASSES, frames=4, crop_size=32).eval()
    ref = registry.register_candidate(
        model, registered_name=NAME, metrics={"top1": 0.25, "top5": 1.0},
        params={"student": "x3d_tiny", "method": "dtkd"},
        tags={"dtkd.role": "student", "dtkd.data.dvc_hash": "md5:abc"}, dataset_fingerprint="fp-1",
        input_spec=REF.input_spec(), build_options=REF.overrides, teachers={"cnn": "x3d_tiny_m"})
    return registry, model, ref


@pytest.fixture
def store(registered):
    """MLflow's global URIs on the module's store for one test (set back afterwards)."""
    import mlflow

    registry = registered[0]
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    yield registered
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def test_registered_version_has_signature_example_and_consumer_requirements(store):
    import mlflow
    from mlflow.models import Model

    registry, model, ref = store
    uri = f"models:/{NAME}/{ref.version}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 4, 32, 32)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, CLASSES)
    assert info.metadata["dtkd"]["architecture"]["name"] == "x3d_tiny"
    local = mlflow.artifacts.download_artifacts(uri)
    example = Model.load(local).load_input_example(local)
    assert np.array_equal(example, packaging.example_clips(REF.input_spec()))
    requirements = open(mlflow.pyfunc.get_model_dependencies(uri)).read().split()
    assert requirements == packaging.model_requirements()
    assert not any("dtkd" in r or "pytorchvideo" in r for r in requirements)
    assert ref.tags[packaging.TAG_SERIALIZATION] == "pt2" and ref.aliases == (CHALLENGER,)
    assert float(registry.client.get_run(ref.run_id).data.tags["dtkd.export_max_abs_diff"]) <= packaging.MAX_ABS_DIFF


def test_consumer_load_is_pickle_free_and_predicts_like_the_eager_model(store, monkeypatch):
    import mlflow

    _, model, ref = store
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # MLflow checks the archive
    loaded = mlflow.pytorch.load_model(f"models:/{NAME}/{ref.version}")
    assert isinstance(loaded, torch.fx.GraphModule)
    clips = torch.randn(5, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(clips), model(clips), atol=packaging.MAX_ABS_DIFF)


def test_dtkd_loads_the_eager_model_it_can_train_and_tap(store):
    registry, model, ref = store
    loaded = registry.load_model(NAME, ref.version)
    assert type(loaded) is type(model) and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    loaded.train()  # the gate's evaluation and teacher reuse toggle modes: an eager module can
    assert loaded.training


def test_pretrained_weights_come_from_a_pt2_version(store, tmp_path):
    from dtkd_ops.pretrained import fetch_weights

    registry, model, ref = store
    path = fetch_weights(f"models:/{NAME}/{ref.version}", tracking_uri=registry.tracking_uri, cache_dir=tmp_path)
    weights = torch.load(path, weights_only=True)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_model_card_is_the_version_description(store):
    registry, _, ref = store
    card = registry.client.get_model_version(NAME, str(ref.version)).description
    for text in ("x3d_tiny, 3 classes", "**Method**: dtkd", "cnn: x3d_tiny_m", "DVC `md5:abc`", "fingerprint `fp-1`",
                 "| top1 | 0.2500 |", "MLflow `pt2`", "mlflow=="):
        assert text in card, text


def test_a_recipe_that_does_not_rebuild_the_model_fails_the_check():
    """register_candidate runs this check on the logged model before it creates the version."""
    wider = models.build("x3d_tiny_m", CLASSES, frames=4, crop_size=32)
    package = packaging.prepare(wider, input_spec=REF.input_spec())  # says x3d_tiny: the weights do not fit
    with pytest.raises(packaging.PackagingError, match="cannot rebuild .*x3d_tiny.*registered weights"):
        packaging.verify_loaded(package, package.model)
