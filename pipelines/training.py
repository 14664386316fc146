"""The main dtkd pipeline: ingest -> validate -> teachers -> distil -> evaluate -> register + gate.

Run it with ``zenml pipeline run pipelines.training.training_pipeline -c configs/default.yaml``
(``make run``). The whole dtkd config arrives as the ``config`` parameter and is validated before
any step runs; each step receives only its own sections, so ZenML's cache is reused by every step
whose inputs did not change (e.g. the data steps when only distillation settings change).
The run's artifacts link to a version of the ZenML Model ``dtkd-student`` (Model Control Plane;
override with a ``model:`` key in the run config).
"""
from __future__ import annotations

from zenml import Model, pipeline

from dtkd.config import DTKDConfig, validate_config
from dtkd.workflows import clip_span
from steps.distill import distill_student
from steps.evaluate import evaluate_student
from steps.ingest import ingest_data
from steps.register import register_student
from steps.train_teachers import train_cnn_teacher, train_vit_teacher
from steps.validate import validate_data

STUDENT_MODEL = Model(
    name="dtkd-student",
    license="Apache-2.0",
    description="Lightweight CNN action recogniser distilled by dual-teacher KD (dtkd).",
    tags=["dtkd", "video", "distillation"],
)


def teacher_train(cfg: DTKDConfig, role: str) -> dict:
    """The training section of one teacher: teacher_training + that teacher's overrides."""
    return cfg.teacher_train_config(role).model_dump(mode="json")


def train_and_register(config: dict) -> None:
    """The DAG both pipelines share: validated config -> steps."""
    cfg = validate_config(config, source="pipeline parameter", prefix="config")
    sections = cfg.model_dump(mode="json")
    data = sections["data"]
    models = sections["models"]
    min_frames = max(clip_span(ref) for ref in (cfg.models.student, cfg.models.cnn_teacher, cfg.models.vit_teacher))

    manifest = ingest_data(data=data)
    clean_manifest, _ = validate_data(manifest=manifest, data=data, min_frames=min_frames)
    teacher_args = dict(manifest=clean_manifest, data=data, registry=sections["registry"], evaluation=sections["evaluation"])
    cnn_teacher = train_cnn_teacher(model=models["cnn_teacher"], train=teacher_train(cfg, "cnn"), **teacher_args)
    vit_teacher = train_vit_teacher(model=models["vit_teacher"], train=teacher_train(cfg, "vit"), **teacher_args)
    student, _ = distill_student(
        manifest=clean_manifest,
        cnn_teacher=cnn_teacher,
        vit_teacher=vit_teacher,
        models=models,
        distill=sections["distill"],
        train=sections["distill_training"],
        data=data,
    )
    test_metrics = evaluate_student(
        student=student, manifest=clean_manifest, model=models["student"], evaluation=sections["evaluation"], data=data
    )
    register_student(student=student, test_metrics=test_metrics, manifest=clean_manifest, config=sections)


@pipeline(enable_cache=True, model=STUDENT_MODEL)
def training_pipeline(config: dict) -> None:
    train_and_register(config)
