"""dtkd.workflows: the jobs the steps call are reproducible from the config's seed alone."""
from __future__ import annotations

import pytest
import torch

from dtkd import workflows
from dtkd.config import ModelRef
from dtkd.data.config import DataConfig
from dtkd.distill import DistillConfig
from dtkd.engine import TrainConfig

REF = ModelRef(name="x3d_tiny", frames=4, sampling_rate=2, crop_size=32)


def _train(manifest, seed: int, noise: int):
    torch.manual_seed(noise)  # whatever ran before in this process must not matter
    cfg = TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, seed=seed)
    model, _ = workflows.train_teacher(manifest, REF, cfg, DataConfig(), device=torch.device("cpu"))
    return model.state_dict()


def test_train_teacher_depends_on_the_config_seed_only(synthetic_manifest):
    a, b, c = (_train(synthetic_manifest, seed, noise) for seed, noise in ((0, 1), (0, 2), (1, 1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.filterwarnings("ignore:phi_CNN fitted on")  # a few clips: the fit is not the point here
def test_distill_student_depends_on_the_config_seed_only(synthetic_manifest):
    teacher_ref = ModelRef(name="x3d_tiny", frames=4, sampling_rate=2, crop_size=32)
    teacher = workflows.build_model(teacher_ref, workflows.num_classes_of(synthetic_manifest)).model.eval()
    cfg = TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, seed=3)
    states = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        student, _, _ = workflows.distill_student(
            synthetic_manifest, REF, {"cnn": (teacher, teacher_ref)}, DistillConfig(method="kd", baseline_teacher="cnn"),
            cfg, DataConfig(), device=torch.device("cpu"),
        )
        states.append(student.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
