"""Paper scale on CPU: configs/paper_hmdb51.yaml (X3D-S student, X3D-M CNN teacher, MViTv2-S ViT
teacher, 16-frame clips, HMDB51 layout) builds and runs one real DT-KD distillation step at batch 2.
Weights are random (no download here); everything else is the paper configuration."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dtkd.assemble import build_job, build_model
from dtkd.config import load_config
from dtkd.data import prepare_manifest
from dtkd.data.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
# A handful of clips fits phi on far fewer locations than the paper's teachers have channels.
@pytest.mark.filterwarnings("ignore:phi_CNN fitted on")
def test_paper_scale_config_runs_one_distillation_step(tmp_path):
    cfg = load_config(REPO / "configs" / "paper_hmdb51.yaml")
    # Two HMDB51-layout classes with one train clip each: one optimiser step at batch 2.
    root = generate_synthetic(tmp_path / "hmdb51", num_classes=2, clips_per_class={"train": 1, "test": 1},
                              frames=96, size=112, fps=24, seed=0)
    cfg.data.root = Path(root)
    cfg.data.store.enabled = False
    cfg.data.num_workers = 0
    for ref in (cfg.models.student, cfg.models.cnn_teacher, cfg.models.vit_teacher):
        ref.pretrained = None  # the official checkpoints need a network; tests run offline
    stage = cfg.distill_stage()
    stage.train = stage.train.model_copy(update={"epochs": 1, "batch_size": 2, "num_workers": 0, "val_every": 0, "amp": "off"})
    stage.distill = stage.distill.model_copy(update={"teacher_cache_views": 0})
    manifest = prepare_manifest(cfg.data)
    assert cfg.data.dataset == "hmdb51" and set(manifest["split"]) == {"train", "test"}

    teachers = {role: build_model(cfg.teacher_ref(role), 2).eval() for role in ("cnn", "vit")}
    before = {k: v.clone() for k, v in teachers["cnn"].state_dict().items()}

    job = build_job(stage, manifest, teachers=teachers)
    result = job.fit(device=torch.device("cpu"))
    student = job.model
    last = result.history[-1]
    assert result.nonfinite_skipped == 0
    for term in ("ce", "sr", "sd", "rkd"):
        assert torch.isfinite(torch.tensor(last[f"train_loss/{term}"])), term
    # The step trained only the student: frozen teachers are bit-identical afterwards.
    assert all(torch.equal(before[k], v) for k, v in teachers["cnn"].state_dict().items())
    # The saved student is a plain X3D-S: no SDB/projection parameters.
    plain = build_model(cfg.models.student, 2)
    assert student.state_dict().keys() == plain.state_dict().keys()
