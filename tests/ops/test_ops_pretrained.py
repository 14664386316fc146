"""Pretrained weights by registry reference: pin the alias, fetch the state dict, load it in the core."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dtkd import models
from dtkd.assemble import build_model
from dtkd.config import validate_config
from dtkd_ops.pretrained import fetch_weights, parse_registry_uri, pin_registry_refs, resolve_ref
from dtkd_ops.registry import ModelRegistry, sqlite_uri

NAME = "dtkd-pretrained-cnn"


@pytest.mark.parametrize("uri, parsed", [("models:/m@pretrained", ("m", "pretrained")), ("models:/m-x/12", ("m-x", "12"))])
def test_parse(uri, parsed):
    assert parse_registry_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["models:/", "models:/m", "models:/m@a/1", "runs:/abc/model"])
def test_parse_refuses_what_it_cannot_pin(uri):
    with pytest.raises(ValueError, match="expected models:/<registered model>@<alias>"):
        parse_registry_uri(uri)


def _register(registry: ModelRegistry, seed: int, num_classes: int = 5):
    torch.manual_seed(seed)
    model = models.build("x3d_tiny", num_classes, frames=4, crop_size=32)
    version = registry.register_candidate(model, registered_name=NAME, metrics={"top1": 0.5},
                                          dataset_fingerprint="corpus", alias="pretrained")
    return model, version


def _config(uri: str):
    return validate_config({"models": {"student": {"name": "x3d_tiny"},
                                       "cnn_teacher": {"name": "x3d_tiny", "frames": 4, "crop_size": 32, "pretrained": uri},
                                       "vit_teacher": {"name": "mvit_tiny"}}})


def test_alias_is_pinned_to_its_version_and_the_weights_load_into_a_model_of_another_head(tmp_path):
    uri = sqlite_uri(tmp_path / "mlflow.db")
    registry = ModelRegistry(uri)
    first, _ = _register(registry, seed=0)
    second, v2 = _register(registry, seed=1)

    cfg = pin_registry_refs(_config(f"models:/{NAME}@pretrained"), tracking_uri=uri)
    assert cfg.models.cnn_teacher.pretrained == f"models:/{NAME}/{v2.version}"  # the alias, now
    assert cfg.models.student.pretrained is None

    ref = resolve_ref(cfg.models.cnn_teacher, tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert Path(ref.pretrained).parent == tmp_path / "cache" and Path(ref.pretrained).name.startswith(f"{NAME}-v2-")
    teacher = build_model(ref, num_classes=3)  # the task has 3 classes, the corpus 5: a new head
    expected = second.state_dict()
    for key, value in teacher.state_dict().items():
        if "proj" in key:  # the classifier: another class count, freshly initialised
            assert value.shape[0] == 3
        else:
            assert torch.equal(value, expected[key]), key

    # Pinned to v1 explicitly: v1's weights, not the alias's.
    path = fetch_weights(f"models:/{NAME}/1", tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert torch.equal(torch.load(path)["blocks.0.conv.conv_t.weight"], first.state_dict()["blocks.0.conv.conv_t.weight"])


def test_a_missing_pretrained_model_says_how_to_make_it(tmp_path):
    uri = sqlite_uri(tmp_path / "mlflow.db")
    with pytest.raises(ValueError, match="dtkd-pretrained-cnn.*run the pretraining pipeline first: make pretrain"):
        pin_registry_refs(_config(f"models:/{NAME}@pretrained"), tracking_uri=uri)


def test_the_pretrain_key_names_the_pretraining_not_where_the_corpus_lies():
    import pandas as pd

    from dtkd.config import load_config
    from steps.pretrain import pretrain_key

    from ops_helpers import REPO_ROOT

    stage = load_config(REPO_ROOT / "configs" / "default.yaml").pretrain_stage("cnn")
    rows = pd.DataFrame({"video_id": ["a"], "label": ["x"], "split": ["train"]})
    moved = stage.model_copy(update={"data": stage.data.model_copy(update={"root": "/elsewhere"})})
    longer = stage.model_copy(update={"train": stage.train.model_copy(update={"epochs": 99})})
    assert pretrain_key(moved, rows) == pretrain_key(stage, rows) != pretrain_key(longer, rows)
    assert pretrain_key(stage, rows.assign(label=["y"])) != pretrain_key(stage, rows)


def test_two_registries_with_the_same_version_number_never_share_a_weights_file(tmp_path):
    """The local stack and the team server (or a registry rebuilt after `make clean`) each have a
    `dtkd-pretrained-cnn` v1; the fetched file was named by name and number only, so the second
    registry got the first one's weights."""
    cache = tmp_path / "cache"
    fetched = {}
    for seed, where in ((0, "local"), (1, "team")):
        uri = sqlite_uri(tmp_path / where / "mlflow.db")
        model, version = _register(ModelRegistry(uri), seed=seed)
        assert version.version == 1
        path = fetch_weights(f"models:/{NAME}/1", tracking_uri=uri, cache_dir=cache)
        assert torch.equal(torch.load(path)["blocks.0.conv.conv_t.weight"], model.state_dict()["blocks.0.conv.conv_t.weight"])
        fetched[where] = path
    assert fetched["local"] != fetched["team"]
