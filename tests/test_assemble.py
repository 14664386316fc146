"""dtkd.assemble: the jobs every entry point runs are reproducible from the config's seed alone."""
from __future__ import annotations

import pytest
import torch

from dtkd.assemble import build_job, build_model
from dtkd.config import DistillStage, EvalConfig, ModelRef, TeacherConfig, TeacherStage
from dtkd.data import STUDENT_VIEW, num_classes_of
from dtkd.data.config import DataConfig
from dtkd.distill import DistillConfig
from dtkd.engine import TrainConfig

REF = ModelRef(name="x3d_tiny", frames=4, sampling_rate=2, crop_size=32)


def _train(manifest, seed: int, noise: int):
    torch.manual_seed(noise)  # whatever ran before in this process must not matter
    cfg = TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, seed=seed)
    stage = TeacherStage(role="cnn", model=TeacherConfig(**REF.model_dump()), train=cfg, data=DataConfig(),
                         evaluation=EvalConfig())
    job = build_job(stage, manifest)
    job.fit(device=torch.device("cpu"))
    return job.model.state_dict()


def test_teacher_job_depends_on_the_config_seed_only(synthetic_manifest):
    a, b, c = (_train(synthetic_manifest, seed, noise) for seed, noise in ((0, 1), (0, 2), (1, 1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _distill_stage(**distill) -> DistillStage:
    return DistillStage(student=REF, teachers={"cnn": REF}, distill=DistillConfig(method="kd", baseline_teacher="cnn", **distill),
                        train=TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3, seed=3),
                        data=DataConfig(), evaluation=EvalConfig())


@pytest.mark.filterwarnings("ignore:phi_CNN fitted on")  # a few clips: the fit is not the point here
def test_distill_job_depends_on_the_config_seed_only(synthetic_manifest):
    teacher = build_model(REF, num_classes_of(synthetic_manifest)).eval()
    states = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        job = build_job(_distill_stage(), synthetic_manifest, teachers={"cnn": teacher})
        job.fit(device=torch.device("cpu"))
        states.append(job.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_distill_job_renders_every_view_and_validates_on_the_student_view(synthetic_manifest):
    teacher = build_model(REF, num_classes_of(synthetic_manifest)).eval()
    job = build_job(_distill_stage(), synthetic_manifest, teachers={"cnn": teacher})
    assert set(job.train.views) == {STUDENT_VIEW, "cnn"}
    assert set(job.val.dataset.views) == set(job.test.dataset.views) == {STUDENT_VIEW}
    with pytest.raises(ValueError, match=r"needs trained teachers for \['cnn'\]"):
        build_job(_distill_stage(), synthetic_manifest)


@pytest.mark.filterwarnings("ignore:phi_CNN fitted on")
def test_cached_teachers_train_on_the_student_view_alone(synthetic_manifest, monkeypatch):
    # With cached teachers, the training loop decodes and moves only the student's view: count the
    # views every rendered item carries, and compare the run with the online one.
    from dtkd.data import ClipDataset

    rendered: list[tuple[str, ...]] = []
    original = ClipDataset.__getitem__

    def counting(self, index):
        item = original(self, index)
        if self.train:
            rendered.append(tuple(sorted(item["inputs"])))
        return item

    monkeypatch.setattr(ClipDataset, "__getitem__", counting)
    teacher = build_model(REF, num_classes_of(synthetic_manifest)).eval()
    job = build_job(_distill_stage(teacher_cache_views=2), synthetic_manifest, teachers={"cnn": teacher})
    job.fit(device=torch.device("cpu"))
    n = len(job.train)
    # The cache: every clip x 2 views with both views (+1 item probing the output shapes);
    # then every training step: the student's view only.
    cache_items = [r for r in rendered if r == ("cnn", STUDENT_VIEW)]
    assert len(cache_items) == 2 * n + 1
    steps = [r for r in rendered[len(cache_items):]]
    assert steps and set(steps) == {(STUDENT_VIEW,)}


@pytest.mark.parametrize("generator", [True, False])
def test_validating_between_epochs_leaves_training_unchanged(generator):
    # Starting an iteration of a DataLoader without a generator draws from the global torch RNG,
    # which dropout uses: a validation loader must not, or validating would change the training.
    from engine_helpers import ToyClips, fast_cfg, toy_distiller, weights
    from torch.utils.data import DataLoader

    from dtkd.assemble import eval_loader
    from dtkd.engine import Trainer

    def loader():
        val = ToyClips(6, train=False, seed=1)
        return eval_loader(val, batch_size=3) if generator else DataLoader(val, batch_size=3)

    runs = []
    for val in (None, loader()):
        d = toy_distiller(dropout=0.5)
        Trainer(d, fast_cfg(epochs=2), progress=False).fit(ToyClips(8), val)
        runs.append(weights(d))
    same = all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert same is generator  # the plain loader shows the failure the generator prevents


def test_a_job_validates_on_the_val_split_when_the_manifest_has_one(synthetic_manifest):
    from dtkd.data.manifest import carve_validation

    manifest = carve_validation(synthetic_manifest, 0.25, seed=0)
    n_val = int((manifest["split"] == "val").sum())
    assert n_val > 0
    stage = TeacherStage(role="cnn", model=TeacherConfig(**REF.model_dump()), data=DataConfig(), evaluation=EvalConfig(),
                         train=TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3))
    job = build_job(stage, manifest)
    assert job.val.dataset.split == "val" and job.test.dataset.split == "test"
    assert len(job.train) == int((manifest["split"] == "train").sum())
    result = job.fit(device=torch.device("cpu"), progress=False)
    assert result.history[-1]["val_n"] == n_val
