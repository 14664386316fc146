"""Pretraining: the teachers' (and optionally the student's) backbones on a broader corpus.

``zenml pipeline run pipelines.pretraining.pretraining_pipeline -c configs/default.yaml``
(``make pretrain``; ``make run`` runs it first). It reads the run config's ``pretraining:``
section: ingest and validate the corpus (the embedded one: 30 classes composed from the target
task's motion primitives, the analogue of Kinetics-400 for HMDB51), then pretrain each role in
``pretraining.roles`` and register it in MLflow as ``<registry_prefix>-<role>`` under
``pretraining.alias``, tagged with the corpus's data version. The training pipeline then starts
from it by reference: ``models.cnn_teacher.pretrained: models:/dtkd-pretrained-cnn@pretrained``.
"""
from __future__ import annotations

from zenml import pipeline
from zenml.enums import ExecutionMode

from pipelines.training import validated
from steps.ingest import ingest_data
from steps.pretrain import pretrain_model
from steps.validate import validate_data


@pipeline(enable_cache=True, execution_mode=ExecutionMode.FAIL_FAST)
def pretraining_pipeline(config: dict) -> None:
    cfg = validated(config)
    data = cfg.pretraining.data
    min_frames = max(cfg.pretrain_stage(role).model.view().span for role in cfg.pretraining.roles)
    manifest = ingest_data(data=data, id="ingest_pretraining_corpus")
    corpus, _ = validate_data(manifest=manifest, data=data, min_frames=min_frames, id="validate_pretraining_corpus")
    for role in cfg.pretraining.roles:
        pretrain_model(manifest=corpus, stage=cfg.pretrain_stage(role), pretraining=cfg.pretraining,
                       id=f"pretrain_{role}")
