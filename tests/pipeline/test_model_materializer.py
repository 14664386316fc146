"""Models pass between the pipeline's steps as build recipe + state dict, never pickled
(steps.materializers.ModelMaterializer), here against a real ZenML local artifact store in a
temp dir (no ZenML client or server needed)."""
from __future__ import annotations

import datetime
import json
import os
import uuid

for _k, _v in {"ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}.items():
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dtkd import models  # noqa: E402

TINY = dict(frames=4, crop_size=32)


@pytest.fixture
def store(tmp_path):
    from zenml.artifact_stores.local_artifact_store import LocalArtifactStore, LocalArtifactStoreConfig
    from zenml.enums import StackComponentType

    now = datetime.datetime.now()
    return LocalArtifactStore(name="test", id=uuid.uuid4(), config=LocalArtifactStoreConfig(path=str(tmp_path)),
                              flavor="local", type=StackComponentType.ARTIFACT_STORE, user=None, created=now,
                              updated=now)


def _materializer(store, name: str):
    from steps.materializers import ModelMaterializer

    uri = os.path.join(store.path, name)
    store.makedirs(uri)  # ZenML makes the artifact's folder before save()
    return ModelMaterializer(uri, artifact_store=store)


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build("x3d_tiny", 3, **TINY, dropout=0.1).eval()


def test_build_records_a_json_recipe_without_weights_options():
    model = models.build("x3d_tiny", 3, frames=4, crop_size=32, sampling_rate=2, pretrained=None, dropout=0.1)
    assert model.dtkd_recipe == {"name": "x3d_tiny", "num_classes": 3,
                                 "overrides": {"frames": 4, "crop_size": 32, "dropout": 0.1}}
    assert json.loads(json.dumps(models.recipe_of(model))) == model.dtkd_recipe
    default = models.recipe_of(models.build("x3d_tiny", 2))  # the spec's standard clip, resolved
    spec = models.get_spec("x3d_tiny")
    assert default["overrides"] == {"frames": spec.frames, "crop_size": spec.crop_size}
    assert models.recipe_of(nn.Linear(2, 2)) is None


def test_round_trip_rebuilds_the_same_model_from_plain_weights(store):
    model = _tiny()
    with torch.no_grad():  # a trained-looking state: the buffers too, not just the init
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(0.25)
    m = _materializer(store, "student")
    m.save(model)
    m.expected_content_hash = m.compute_content_hash(model)  # what ZenML records and hands back
    loaded = m.load(nn.Module)

    assert sorted(os.listdir(m.uri)) == ["recipe.json", "weights.pt"]
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.dtkd_recipe == model.dtkd_recipe
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # weights.pt is a plain state dict: loads with weights_only=True (no pickled module in it)
    state = torch.load(os.path.join(m.uri, "weights.pt"), weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert json.loads(open(os.path.join(m.uri, "recipe.json")).read()) == model.dtkd_recipe


def test_load_does_not_move_the_callers_rng(store):
    m = _materializer(store, "m")
    m.save(_tiny())
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    m.load(nn.Module)
    assert torch.equal(torch.rand(3), expected)


def test_content_hash_follows_the_weights_and_the_recipe(store):
    m = _materializer(store, "h")
    first, twin = _tiny(0), _tiny(0)
    assert m.compute_content_hash(first) == m.compute_content_hash(twin)
    with torch.no_grad():
        next(twin.parameters()).view(-1)[0] += 1e-3
    assert m.compute_content_hash(first) != m.compute_content_hash(twin)
    other_head = _tiny(0)
    other_head.dtkd_recipe = {**other_head.dtkd_recipe, "overrides": {**TINY, "dropout": 0.3}}
    assert m.compute_content_hash(first) != m.compute_content_hash(other_head)
    assert m.compute_content_hash(nn.Linear(2, 2)) is None


def test_a_tampered_artifact_fails_its_recorded_hash(store):
    model = _tiny()
    m = _materializer(store, "t")
    m.save(model)
    state = torch.load(os.path.join(m.uri, "weights.pt"), weights_only=True)
    next(iter(state.values())).view(-1)[0] += 1
    torch.save(state, os.path.join(m.uri, "weights.pt"))
    m.expected_content_hash = m.compute_content_hash(model)
    with pytest.raises(RuntimeError, match="does not match its recorded content hash"):
        m.load(nn.Module)


def test_a_module_without_recipe_is_refused_at_save(store):
    m = _materializer(store, "linear")
    with pytest.raises(RuntimeError, match=r"torch\.nn\.modules\.linear\.Linear.*dtkd\.models\.build"):
        m.save(nn.Linear(4, 2))
    assert os.listdir(m.uri) == []


def test_a_model_changed_after_build_is_refused_at_save(store):
    model = _tiny()
    model.extra_head = nn.Linear(4, 2)  # the recipe no longer builds this module
    with pytest.raises(RuntimeError, match="no longer matches the recipe.*extra_head"):
        _materializer(store, "changed").save(model)


def test_an_unknown_model_in_the_recipe_fails_load_naming_uri_and_name(store):
    m = _materializer(store, "renamed")
    m.save(_tiny())
    recipe_path = os.path.join(m.uri, "recipe.json")
    recipe = json.loads(open(recipe_path).read())
    with open(recipe_path, "w") as f:
        json.dump({**recipe, "name": "x3d_gone"}, f)
    with pytest.raises(RuntimeError, match="x3d_gone") as err:
        m.load(nn.Module)
    assert m.uri in str(err.value)
