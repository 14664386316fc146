"""dtkd.assemble on a multi-head dataset (the EPIC-KITCHENS-100 fixture): teachers and a DT-KD
student with verb and noun heads, tested for verb / noun / action top-1 and top-5."""
from __future__ import annotations

import pytest
import torch

from dtkd.assemble import build_job, output_size
from dtkd.config import DistillStage, EvalConfig, ModelRef, TeacherConfig, TeacherStage
from dtkd.data import build_manifest
from dtkd.data.config import DataConfig
from dtkd.data.epic import write_epic_fixture
from dtkd.distill import DistillConfig
from dtkd.engine import TrainConfig

STUDENT = ModelRef(name="x3d_tiny", frames=4, sampling_rate=2, crop_size=32)
VIT = ModelRef(name="mvit_tiny", frames=4, sampling_rate=2, crop_size=32)
TRAIN = TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, seed=0)
DATA = DataConfig(dataset="epic_kitchens100", root="unused")


@pytest.fixture(scope="module")
def epic_manifest(tmp_path_factory):
    root = write_epic_fixture(tmp_path_factory.mktemp("epic"), participants=("P01", "P02"), segments_per_video=4,
                              segment_frames=8, num_verbs=3, num_nouns=4, size=32)
    return build_manifest("epic_kitchens100", root)


def _teacher(manifest, ref, role):
    stage = TeacherStage(role=role, model=TeacherConfig(**ref.model_dump()), train=TRAIN, data=DATA,
                         evaluation=EvalConfig(batch_size=4))
    job = build_job(stage, manifest)
    job.fit(device=torch.device("cpu"), progress=False)
    return job


@pytest.mark.filterwarnings("ignore:phi_CNN fitted on")  # a few clips: the fit is not the point here
def test_multihead_teachers_and_dtkd_student_report_verb_noun_action(epic_manifest):
    assert output_size(epic_manifest) == 7  # 3 verbs + 4 nouns side by side
    cnn = _teacher(epic_manifest, STUDENT, "cnn")
    assert cnn.heads.as_dict() == {"verb": 3, "noun": 4}
    assert cnn.model(torch.zeros(1, 3, 4, 32, 32)).shape == (1, 7)
    vit = _teacher(epic_manifest, VIT, "vit")
    stage = DistillStage(student=STUDENT, teachers={"cnn": STUDENT, "vit": VIT},
                         distill=DistillConfig(method="dtkd", prepare_max_batches=1), train=TRAIN, data=DATA,
                         evaluation=EvalConfig(batch_size=4))
    job = build_job(stage, epic_manifest, teachers={"cnn": cnn.model, "vit": vit.model})
    assert job.module.heads == cnn.heads and set(job.module.sr) == {"verb", "noun"}
    result = job.fit(device=torch.device("cpu"), progress=False)
    assert 0.0 <= result.history[-1]["val_top1"] <= 1.0
    test = job.evaluate(device=torch.device("cpu"))
    n_test = int((epic_manifest["split"] == "test").sum())
    assert test.n == n_test
    got = test.metrics("test_")
    for name in ("verb", "noun", "action"):
        for k in (1, 5):
            value = got[f"test_{name}_top{k}"]
            assert 0.0 <= value <= 1.0 and (value * n_test) == pytest.approx(round(value * n_test))
    assert got["test_top1"] == got["test_action_top1"] <= min(got["test_verb_top1"], got["test_noun_top1"])
    assert got["test_verb_top5"] == got["test_noun_top5"] == 1.0  # <= 5 classes per head
    assert test.confusion.shape == (3, 3) and test.confusion.sum() == n_test  # the verb head's
