"""Scheduled retraining: retrain only when the DVC data version changed since the champion.

``zenml pipeline run pipelines.retraining.retraining_pipeline -c configs/default.yaml`` (``make
retrain``). It is a ZenML *dynamic* pipeline: the first step compares the DVC data version with
the one recorded on the current champion, and the expensive steps (teachers, distillation,
evaluation, registration) are added to the run only when it changed (or there is no champion, or
``force: true``). On a Kubernetes stack, ``configs/retrain-schedule.yaml`` adds a cron schedule,
which ZenML's Kubernetes orchestrator turns into a CronJob; the local orchestrator cannot schedule
(see ``python -m pipelines.schedule``).
"""
from __future__ import annotations

from zenml import pipeline
from zenml.enums import ExecutionMode

from pipelines.training import STUDENT_MODEL, train_and_register, validated
from steps.data_version import check_data_version
from steps.distill import distill_student
from steps.evaluate import evaluate_student
from steps.ingest import ingest_data
from steps.register import register_student
from steps.train_teachers import train_cnn_teacher, train_vit_teacher
from steps.validate import validate_data

# A dynamic pipeline's steps are only known when it runs; ZenML applies a run config's `steps:`
# section (the Kubernetes overlay's GPU pod settings) to the steps listed here, as templates.
STEP_TEMPLATES = [check_data_version, ingest_data, validate_data, train_cnn_teacher, train_vit_teacher,
                  distill_student, evaluate_student, register_student]


# The ZenML Model is linked per step, not to the pipeline: a pipeline-level model opens a model
# version when the run starts, so every skipping run left an empty one; added with the steps,
# a version exists exactly when the run trains and registers (one per MLflow student version).
@pipeline(dynamic=True, enable_cache=True, execution_mode=ExecutionMode.FAIL_FAST, depends_on=STEP_TEMPLATES)
def retraining_pipeline(config: dict, force: bool = False) -> None:
    cfg = validated(config)
    decision = check_data_version(registered_name=cfg.registry.student_name, data=cfg.data, force=force)
    if decision.load()["retrain"]:
        train_and_register(cfg, model=STUDENT_MODEL)
