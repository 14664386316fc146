"""The main dtkd pipeline: ingest -> validate -> teachers -> distil -> evaluate -> register + gate.

Run it with ``zenml pipeline run pipelines.training.training_pipeline -c configs/default.yaml``
(``make run``). The whole dtkd config arrives as the ``config`` parameter and is validated before
any step runs; each step receives only the typed sections it uses (``DTKDConfig.teacher_stage``,
``distill_stage``, ...), so ZenML's cache is reused by every step whose inputs did not change (e.g.
the data steps and the teachers when only distillation settings change).
The run's artifacts link to a version of the ZenML Model ``dtkd-student`` (Model Control Plane;
override with a ``model:`` key in the run config).
"""
from __future__ import annotations

from zenml import Model, pipeline
from zenml.enums import ExecutionMode

from dtkd.config import TEACHER_ROLES, ConfigError, DTKDConfig, validate_config
from dtkd_ops.gate import load_gate_config
from dtkd_ops.pretrained import pin_registry_refs
from steps.distill import distill_student
from steps.evaluate import evaluate_student
from steps.ingest import ingest_data
from steps.register import register_student
from steps.stack import tracking_uri
from steps.train_teachers import train_cnn_teacher, train_vit_teacher
from steps.validate import validate_data

STUDENT_MODEL = Model(
    name="dtkd-student",
    license="Apache-2.0",
    description="Lightweight CNN action recogniser distilled by dual-teacher KD (dtkd).",
    tags=["dtkd", "video", "distillation"],
)


def validated(config: dict) -> DTKDConfig:
    """The pipeline parameter ``config`` as a DTKDConfig, validated once, here: when ZenML
    compiles the pipeline, before any step runs (so is the gate config, in train_and_register)."""
    return validate_config(config, source="pipeline parameter", prefix="config")


def pinned(cfg: DTKDConfig) -> DTKDConfig:
    """``cfg`` with each ``pretrained: models:/name@alias`` pinned to the version the alias names
    now (at compile time), so a step's cache key changes when the alias moves."""
    try:
        return pin_registry_refs(cfg, tracking_uri=tracking_uri())
    except ValueError as err:
        raise ConfigError(f"pipeline parameter: config.models: {err}") from None


def train_and_register(cfg: DTKDConfig, *, model: Model | None = None) -> None:
    """The DAG both pipelines share: each step gets the typed sections it uses, and only those.
    ``model``: link each of these steps to that ZenML Model (the retraining pipeline, which adds
    them only when it retrains: a run that skips then opens no model version)."""
    cfg = pinned(cfg)
    linked = (lambda s: s.with_options(model=model)) if model is not None else (lambda s: s)
    try:
        gate = load_gate_config(cfg.registry.gate_config)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"config.registry.gate_config: {err}") from None
    distill = cfg.distill_stage()

    manifest = linked(ingest_data)(data=cfg.data)
    clean_manifest, _ = linked(validate_data)(manifest=manifest, data=cfg.data, min_frames=cfg.min_frames())
    cnn_teacher = linked(train_cnn_teacher)(manifest=clean_manifest, stage=cfg.teacher_stage("cnn"),
                                            registry=cfg.registry, gate=gate)
    vit_teacher = linked(train_vit_teacher)(manifest=clean_manifest, stage=cfg.teacher_stage("vit"),
                                            registry=cfg.registry, gate=gate)
    student, _ = linked(distill_student)(manifest=clean_manifest, cnn_teacher=cnn_teacher, vit_teacher=vit_teacher,
                                         stage=distill)
    tested = dict(model=cfg.models.student, evaluation=cfg.evaluation, data=cfg.data, gate=gate)
    test_metrics = linked(evaluate_student)(student=student, manifest=clean_manifest, **tested)
    teachers = {role: cfg.teacher_ref(role).name for role in TEACHER_ROLES}
    linked(register_student)(student=student, test_metrics=test_metrics, manifest=clean_manifest,
                             method=cfg.distill.method, teachers=teachers, registry=cfg.registry, **tested)


@pipeline(enable_cache=True, model=STUDENT_MODEL, execution_mode=ExecutionMode.FAIL_FAST)
def training_pipeline(config: dict) -> None:
    train_and_register(validated(config))
