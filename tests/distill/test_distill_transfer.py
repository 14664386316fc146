"""Distilling on the unlabelled transfer set: CE on the labelled clips only, the teacher terms on
every clip, the teacher cache covering both."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dtkd.assemble import build_job, build_model
from dtkd.config import DistillStage, EvalConfig, ModelRef
from dtkd.data import DataConfig, num_classes_of, prepare_manifest
from dtkd.distill import DistillConfig
from dtkd.distill.distiller import labelled_cross_entropy
from dtkd.engine import TrainConfig

REF = ModelRef(name="x3d_tiny", frames=4, sampling_rate=2, crop_size=32)


def test_ce_is_averaged_over_the_labelled_clips_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], requires_grad=True)
    target = torch.tensor([0, -1, 1])
    expected = (F.cross_entropy(logits[:1], target[:1]) + F.cross_entropy(logits[2:], target[2:])) / 2
    assert labelled_cross_entropy(logits, target).item() == pytest.approx(expected.item())
    # By hand: (log(1 + e^-2) + log(1 + e^10)) / 2
    assert expected.item() == pytest.approx((0.126928 + 10.0000454) / 2, abs=1e-5)
    none = labelled_cross_entropy(logits, torch.tensor([-1, -1, -1]))
    assert none.item() == 0.0 and none.requires_grad  # a batch of transfer clips: no NaN
    none.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("method", ["none", "dkd"])
def test_methods_that_need_every_label_refuse_the_transfer_set(method):
    with pytest.raises(ValueError, match=f"transfer_set: method '{method}' cannot use unlabelled clips"):
        DistillConfig(method=method, transfer_set=True)


def _stage(**distill) -> DistillStage:
    return DistillStage(student=REF, teachers={"cnn": REF},
                        distill=DistillConfig(method="kd", baseline_teacher="cnn", teacher_cache_views=2, **distill),
                        train=TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3),
                        data=DataConfig(), evaluation=EvalConfig())


def test_the_transfer_set_joins_the_training_clips_and_the_teacher_cache(tmp_path):
    data = DataConfig(root=tmp_path / "s", unlabelled="synthetic", synthetic={
        "num_classes": 2, "clips_per_class": {"train": 2, "val": 1, "test": 1, "unused": 2}, "frames": 8, "size": 32})
    manifest = prepare_manifest(data)
    teacher = build_model(REF, num_classes_of(manifest)).eval()
    plain = build_job(_stage(), manifest, teachers={"cnn": teacher})
    transfer = build_job(_stage(transfer_set=True), manifest, teachers={"cnn": teacher})
    assert len(plain.train) == 4 and len(transfer.train) == 8
    result = transfer.fit(device="cpu", progress=False, checkpoint_dir=tmp_path / "ckpt")
    cache = next((tmp_path / "ckpt").rglob("*.logits.npy"), None)
    assert cache is not None and cache.stat().st_size > 0
    import numpy as np
    assert np.load(cache).shape[:2] == (8, 2)  # every clip, labelled or not, x 2 cached views
    metrics = result.history[-1]
    assert 0.0 <= metrics["train_top1"] <= 1.0 and metrics["val_top1"] == metrics["val_top1"]
    # Without unlabelled rows the switch is an error that says which key is missing.
    with pytest.raises(ValueError, match="transfer_set is on but the manifest has no unlabelled clips: set data.unlabelled"):
        build_job(_stage(transfer_set=True), manifest[manifest["split"] != "unlabelled"], teachers={"cnn": teacher})
