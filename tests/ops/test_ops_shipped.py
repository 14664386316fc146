"""Shipped pretrained backbones: export from a real MLflow registry, found only for their own pretraining,
refused when damaged; the repository's shipped records still match the default config."""
from __future__ import annotations

import json

import pytest
import torch

from dtkd import models
from dtkd.config import load_config
from dtkd_ops.registry import ModelRegistry, sqlite_uri
from dtkd_ops.shipped import (DEFAULT_DIR, TAG_HOST, TAG_KEY, TAG_SOURCE, TAG_STAGE, TAG_TOP1, export, find_shipped,
                              host_tags, load_state_dict, pretrain_key, source_tags, stage_key)

from ops_helpers import REPO_ROOT

NAME = "dtkd-pretrained-student"


def _registered(tmp_path, tags):
    uri = sqlite_uri(tmp_path / "mlflow.db")
    torch.manual_seed(0)
    model = models.build("x3d_tiny", 5, frames=4, crop_size=32)
    ModelRegistry(uri).register_candidate(model, registered_name=NAME, metrics={"top1": 0.25}, tags=tags,
                                          dataset_fingerprint="corpus", alias="pretrained")
    return uri, model


def test_export_then_find_gives_the_registered_weights_for_its_own_key_only(tmp_path):
    tags = {TAG_KEY: "k" * 16, TAG_STAGE: "s" * 16, TAG_TOP1: "0.250000", **host_tags(12.3)}
    uri, model = _registered(tmp_path, tags)
    out = tmp_path / "shipped"
    weights = export(NAME, out, tracking_uri=uri)
    meta = json.loads((out / f"{NAME}.json").read_text())
    assert weights == out / f"{NAME}.pt" and meta["key"] == "k" * 16 and meta["stage_key"] == "s" * 16
    assert meta["corpus_test_top1"] == 0.25 and meta["trained"]["seconds"] == "12" and meta["trained"]["cpu"]

    found = find_shipped(out, NAME, "k" * 16)
    state = load_state_dict(found)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert find_shipped(out, NAME, "another-pretraining") is None
    assert find_shipped(out, "dtkd-pretrained-vit", "k" * 16) is None  # no record
    assert find_shipped(None, NAME, "k" * 16) is None  # pretraining.shipped: null

    # registered again from the shipped file: where it was trained, not where it was loaded
    assert source_tags(found, 99.0) == {TAG_SOURCE: f"shipped:{NAME}.pt", f"{TAG_HOST}.cpu": meta["trained"]["cpu"],
                                        f"{TAG_HOST}.threads": meta["trained"]["threads"], f"{TAG_HOST}.seconds": "12"}
    assert source_tags(None, 99.0) == {TAG_SOURCE: "trained", **host_tags(99.0)}


def test_damaged_or_missing_weights_and_bad_records_are_errors_naming_the_file(tmp_path):
    uri, _ = _registered(tmp_path, {TAG_KEY: "k" * 16})
    out = tmp_path / "shipped"
    weights = export(NAME, out, tracking_uri=uri)
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{NAME}\.pt: sha256 .* differs from .* recorded in .*{NAME}\.json"):
        find_shipped(out, NAME, "k" * 16)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"names weights .*{NAME}\.pt"):
        find_shipped(out, NAME, "k" * 16)
    (out / f"{NAME}.json").write_text('{"key": "k"}')
    with pytest.raises(ValueError, match=rf"{NAME}\.json: not a shipped-backbone record"):
        find_shipped(out, NAME, "k")


def test_export_refuses_a_version_no_pretraining_registered(tmp_path):
    uri, _ = _registered(tmp_path, {})
    with pytest.raises(ValueError, match=f"{NAME} v1 has no {TAG_KEY} tag"):
        export(NAME, tmp_path / "shipped", tracking_uri=uri)


def test_the_stage_key_is_the_config_part_of_the_pretrain_key():
    import pandas as pd

    stage = load_config(REPO_ROOT / "configs" / "default.yaml").pretrain_stage("cnn")
    rows = pd.DataFrame({"video_id": ["a"], "label": ["x"], "split": ["train"]})
    moved = stage.model_copy(update={"data": stage.data.model_copy(update={"root": "/elsewhere"})})
    longer = stage.model_copy(update={"train": stage.train.model_copy(update={"epochs": 99})})
    assert stage_key(moved) == stage_key(stage) != stage_key(longer)
    assert pretrain_key(stage, rows) != pretrain_key(stage, rows.assign(label=["y"]))


def test_every_shipped_backbone_is_still_what_the_default_config_pretrains():
    """Changing the default's model, view or pretraining config without exporting the backbones
    again would make every first `make run` train them (README: "Pretrained backbones")."""
    records = sorted(DEFAULT_DIR.glob("*.json"))
    cfg = load_config(REPO_ROOT / "configs" / "default.yaml")
    assert cfg.pretraining.shipped == "weights/pretrained"
    assert {r.stem for r in records} == {f"{cfg.pretraining.registry_prefix}-{role}" for role in cfg.pretraining.roles}
    for record in records:
        meta = json.loads(record.read_text())
        role = meta["name"].rsplit("-", 1)[1]
        assert meta["stage_key"] == stage_key(cfg.pretrain_stage(role)), (
            f"{record} was exported for another {role} pretraining: python -m dtkd_ops.shipped export")
        assert find_shipped(DEFAULT_DIR, meta["name"], meta["key"]) is not None  # bytes match the record
