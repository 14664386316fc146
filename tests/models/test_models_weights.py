"""load_weights: local round trips, checkpoint wrappers, a fine-tuning head, clear reports."""
from __future__ import annotations

import collections

import pytest
import torch

from dtkd import models
from dtkd.models import load_weights, read_state_dict


def _fresh(name="x3d_tiny", num_classes=5, seed=0):
    torch.manual_seed(seed)
    return models.build(name, num_classes)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", ["x3d_tiny", "mvit_tiny", "slowfast_tiny", "swin3d_tiny"])
def test_round_trip_from_a_local_file(tmp_path, name):
    src = _fresh(name, seed=1)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = _fresh(name, seed=2)
    report = load_weights(dst, path, strict=True)
    assert report.ok and not report.head_skipped
    assert len(report.loaded) == len(src.state_dict())
    _assert_same_state(src, dst)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"model_state": sd, "epoch": 3},  # pytorchvideo / dtkd trainer
    lambda sd: {"state_dict": sd, "meta": {"x": 1}},  # Lightning, mmaction2
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {"checkpoint": 1, "model_state": {"module." + k: v for k, v in sd.items()}},  # saved under DDP
    lambda sd: collections.OrderedDict(("_orig_mod." + k, v) for k, v in sd.items()),  # torch.compile
])
def test_common_checkpoint_wrappers_and_prefixes(tmp_path, wrap):
    src, dst = _fresh(seed=1), _fresh(seed=2)
    torch.save(wrap(src.state_dict()), tmp_path / "w.pt")
    assert load_weights(dst, tmp_path / "w.pt").ok
    _assert_same_state(src, dst)


def test_a_head_with_another_class_count_is_skipped_and_reported(tmp_path):
    src = _fresh(num_classes=400, seed=1)
    torch.save({"model_state": src.state_dict()}, tmp_path / "k400.pyth")
    dst = _fresh(num_classes=6, seed=2)
    head_before = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("blocks.5.proj.")}
    report = load_weights(dst, tmp_path / "k400.pyth", strict=True)  # fine-tuning: not an error
    assert report.head_skipped
    assert set(report.skipped) == {"blocks.5.proj.weight", "blocks.5.proj.bias"}
    assert "(400, 256)" in report.skipped["blocks.5.proj.weight"] and "(6, 256)" in report.skipped["blocks.5.proj.weight"]
    assert not report.missing and not report.unexpected
    state = dst.state_dict()
    for k, v in src.state_dict().items():
        if k in head_before:
            torch.testing.assert_close(state[k], head_before[k])  # the new head keeps its init
        else:
            torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    assert "skipped (shape) blocks.5.proj.weight" in report.summary()


def test_missing_and_unexpected_keys_are_reported_and_strict_raises(tmp_path):
    sd = _fresh(seed=1).state_dict()
    dropped = "blocks.1.res_blocks.0.branch2.conv_a.weight"
    del sd[dropped]
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.pt")
    report = load_weights(_fresh(), tmp_path / "w.pt")
    assert report.missing == [dropped] and report.unexpected == ["extra.weight"] and not report.ok
    text = report.summary()
    assert "missing 1: " + dropped in text and "unexpected 1: extra.weight" in text
    with pytest.raises(ValueError, match="strict load failed.*extra.weight"):
        load_weights(_fresh(), tmp_path / "w.pt", strict=True)


def test_a_mis_shaped_backbone_tensor_fails_a_strict_load(tmp_path):
    sd = _fresh(seed=1).state_dict()
    key = "blocks.0.conv.conv_t.weight"
    sd[key] = torch.zeros(1, 1, 1, 1, 1)
    torch.save(sd, tmp_path / "w.pt")
    assert key in load_weights(_fresh(), tmp_path / "w.pt").skipped
    with pytest.raises(ValueError, match=key):
        load_weights(_fresh(), tmp_path / "w.pt", strict=True)


def test_build_with_pretrained_loads_the_file(tmp_path):
    src = _fresh("mvit_tiny", seed=1)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    _assert_same_state(src, models.build("mvit_tiny", 5, pretrained=str(tmp_path / "w.pt")))


class Payload:  # an arbitrary pickled object: must not be unpickled
    pass


def test_files_are_read_with_weights_only(tmp_path):
    torch.save({"model_state": _fresh().state_dict(), "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported global"):
        read_state_dict(tmp_path / "evil.pt")


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights(_fresh(), tmp_path / "nope.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match=r"no state dict found; top-level keys: \['epoch', 'lr'\]"):
        load_weights(_fresh(), tmp_path / "meta.pt")


def test_an_in_memory_state_dict_is_accepted():
    src, dst = _fresh(seed=1), _fresh(seed=2)
    assert load_weights(dst, src.state_dict()).ok
    _assert_same_state(src, dst)
