"""DataConfig: strict keys, clear errors, and knobs that reach the generator and ClipDataset."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pydantic import ValidationError

from dtkd.data import DataConfig, prepare_manifest, prepare_store
from dtkd.data.synthetic import generate_synthetic


def test_defaults_are_the_embedded_synthetic_set():
    cfg = DataConfig()
    assert (cfg.dataset, cfg.root, cfg.split, cfg.num_workers) == ("synthetic", Path("data/synthetic"), 1, 0)
    assert cfg.synthetic.clips_per_class.model_dump() == {"train": 12, "val": 0, "test": 6, "unused": 0}
    assert cfg.dataset_kwargs() == {"store": None, "backend": "pyav", "train_scale": (0.25, 1.0)}


def test_synthetic_knobs_are_generate_synthetic_keywords():
    knobs = DataConfig().synthetic.model_dump()
    params = inspect.signature(generate_synthetic).parameters
    assert set(knobs) <= set(params)
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in knobs)


@pytest.mark.parametrize("data, where", [
    ({"datset": "hmdb51"}, "datset"),
    ({"dataset": "hmdb"}, "unknown dataset 'hmdb'; known: epic_kitchens100, hmdb51, kinetics, ssv2, synthetic, ucf101"),
    ({"split": 4}, "split"),
    ({"synthetic": {"num_classes": 9}}, "the target vocabulary has at most 8"),
    ({"synthetic": {"num_classes": 31, "vocabulary": "pretrain"}}, "num_classes"),
    ({"synthetic": {"size": 63}}, "size must be even"),
    ({"synthetic": {"clips_per_class": {"train": 2, "holdout": 1}}}, "clips_per_class.holdout"),
    ({"store": {"enabled": True}}, "store.dir is required"),
    ({"backend": "decord"}, "backend"),
    ({"num_workers": -1}, "num_workers"),
    ({"train_scale": [0.0, 1.0]}, "train_scale must satisfy 0 < low <= high <= 1"),
    ({"train_scale": [0.9, 0.5]}, "train_scale must satisfy 0 < low <= high <= 1"),
])
def test_bad_values_are_refused_naming_the_field(data, where):
    with pytest.raises(ValidationError) as err:
        DataConfig.model_validate(data)
    assert where in str(err.value)


def test_store_settings_reach_the_dataset_kwargs(tmp_path):
    cfg = DataConfig.model_validate({"store": {"enabled": True, "dir": str(tmp_path / "s")},
                                     "backend": "pyav", "train_scale": [0.8, 1.0]})
    assert cfg.dataset_kwargs() == {"store": tmp_path / "s", "backend": "pyav", "train_scale": (0.8, 1.0)}


def test_prepare_generates_builds_manifest_and_store(tmp_path):
    cfg = DataConfig.model_validate({
        "root": str(tmp_path / "syn"),
        "synthetic": {"num_classes": 2, "clips_per_class": {"train": 2, "test": 1}, "frames": 8, "size": 32},
        "store": {"enabled": True, "dir": str(tmp_path / "store"), "short_side": 16},
    })
    manifest = prepare_manifest(cfg)
    assert len(manifest) == 6 and list(manifest.columns[-2:]) == ["ok", "error"]  # on_bad_video: flag
    store = prepare_store(cfg, manifest)
    assert len(store) == 6 and store.shape(manifest["video_id"][0]) == (8, 16, 16, 3)
    assert prepare_store(DataConfig(), manifest) is None
