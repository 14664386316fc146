"""The one place that assembles a run: a stage's typed config + a manifest -> a :class:`Job`.

``build_job(stage, manifest, teachers=...)`` builds everything a stage needs, in a fixed order:
the models (after seeding from the stage's training seed, so a job depends on its config alone),
the distiller, the train / validation / test datasets and the training config. The pipeline's
steps, the torchrun launcher (``dtkd.launch``), the benchmarks and the promotion gate's evaluator
all go through it; nothing else builds a ClipDataset or a distiller for a run.

A new stage is one function registered in ``STAGES`` under its config's ``kind``.
Core library: no zenml/mlflow/dvc.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from dtkd import models
from dtkd.config import DistillStage, EvalConfig, ModelRef, PretrainStage, TeacherStage
from dtkd.data import STUDENT_VIEW, ClipDataset, DataConfig, ViewSpec, num_classes_of
from dtkd.data.heads import HeadLayout
from dtkd.data.manifest import heads_of
from dtkd.distill import DistillConfig, Distiller, TeacherRef, build_distiller
from dtkd.engine import Trainer, TrainConfig, TrainResult
from dtkd.eval import EvalResult, evaluate
from dtkd.registry import Registry

STAGES: Registry = Registry("stage")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(ref: ModelRef, num_classes: int) -> nn.Module:
    """The model ``ref`` names, built for its view (and its ``pretrained`` weights loaded)."""
    kwargs = dict(ref.overrides)
    if ref.frames:
        kwargs.setdefault("frames", ref.frames)
    if ref.crop_size:
        kwargs.setdefault("crop_size", ref.crop_size)
    if ref.pretrained:
        kwargs["pretrained"] = ref.pretrained
    return models.build(ref.name, num_classes, **kwargs)


# ------------------------------------------------------------------------------- data
def clip_dataset(manifest: pd.DataFrame, split: str | Sequence[str], views: Mapping[str, ViewSpec], *, train: bool,
                 data: DataConfig | None = None, evaluation: EvalConfig | None = None, seed: int = 0) -> ClipDataset:
    """The clips of one split: training (one random view per item) or evaluation
    (``evaluation.num_clips`` x ``num_crops`` views per item)."""
    data, evaluation = data or DataConfig(), evaluation or EvalConfig()
    dataset = ClipDataset(manifest, split, views, train=train, num_clips=1 if train else evaluation.num_clips,
                          num_crops=1 if train else evaluation.num_crops, seed=seed, **data.dataset_kwargs())
    if len(dataset) == 0:
        raise ValueError(f"the manifest has no clips in split {dataset.split!r}")
    return dataset


def eval_loader(dataset: ClipDataset, *, batch_size: int, num_workers: int = 0) -> DataLoader:
    """In order, every clip once (the Trainer draws training batches with its own sampler). It has
    a generator of its own: starting an iteration then draws nothing from the global torch RNG,
    which training (dropout) uses, so validating between epochs leaves training unchanged."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))


def test_loader(manifest: pd.DataFrame, view: ViewSpec, evaluation: EvalConfig | None = None,
                data: DataConfig | None = None, *, split: str = "test") -> DataLoader:
    """The evaluation protocol's loader over ``split`` for a model that sees ``view``."""
    evaluation = evaluation or EvalConfig()
    dataset = clip_dataset(manifest, split, {STUDENT_VIEW: view}, train=False, data=data, evaluation=evaluation)
    return eval_loader(dataset, batch_size=evaluation.batch_size, num_workers=(data or DataConfig()).num_workers)


def evaluate_model(model: nn.Module, view: ViewSpec, manifest: pd.DataFrame, evaluation: EvalConfig | None = None,
                   data: DataConfig | None = None, *, split: str = "test", device: torch.device | None = None) -> EvalResult:
    """Multi-view accuracy of ``model`` on ``split`` (the evaluation protocol of ``evaluation``)."""
    loader = test_loader(manifest, view, evaluation, data, split=split)
    return evaluate(model, loader, num_classes=num_classes_of(manifest), view=STUDENT_VIEW, device=device or default_device(),
                    heads=heads_of(manifest))


def output_size(manifest: pd.DataFrame) -> int:
    """Logits a model of this manifest has: its class count, or for a multi-head manifest
    (``heads`` column, e.g. EPIC-KITCHENS' verb and noun) the heads' class counts side by side."""
    heads = heads_of(manifest)
    return heads.total if heads is not None else num_classes_of(manifest)


def validation_split(manifest: pd.DataFrame) -> str:
    """The split the Trainer validates on: ``val`` when the manifest has one, else ``test``."""
    return "val" if (manifest["split"] == "val").any() else "test"


# -------------------------------------------------------------------------------- jobs
class EpochDiagnostics:
    """Trainer callback: the distiller's per-epoch diagnostics (DATW weights, mask fractions)."""

    def __init__(self, module: Distiller) -> None:
        self.module = module
        self.records: list[dict] = []

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        self.records.append({"epoch": epoch, **self.module.epoch_diagnostics()})


@dataclass
class Job:
    """One training run, assembled: what the Trainer trains, on what, how, and how it is tested."""

    module: Any  # a dtkd.engine.TrainingModule (a Distiller for the stages of a config)
    train: Any  # training Dataset (every view the module uses); the Trainer samples it
    train_cfg: TrainConfig
    val: Any = None  # validation loader (student view); None: no validation
    callbacks: list = field(default_factory=list)
    test: Optional[DataLoader] = None  # the evaluation protocol's test loader
    num_classes: Optional[int] = None
    diagnostics: Optional[EpochDiagnostics] = None
    heads: Optional[HeadLayout] = None  # a multi-head student: evaluate() reports every head and the action

    @property
    def model(self) -> nn.Module:
        """The model this job trains (the student; for a teacher stage, the teacher)."""
        return self.module.student

    def fit(self, *, device: torch.device | str | None = None, callbacks: Sequence = (), checkpoint_dir=None,
            progress: bool = True, resume: bool = True) -> TrainResult:
        trainer = Trainer(self.module, self.train_cfg, device=device or default_device(),
                          callbacks=[*self.callbacks, *callbacks], checkpoint_dir=checkpoint_dir, progress=progress)
        result = trainer.fit(self.train, self.val, resume=resume)
        self.model.eval()
        return result

    def evaluate(self, model: nn.Module | None = None, *, device: torch.device | None = None) -> EvalResult:
        """Test accuracy (the evaluation protocol) of ``model``, by default the trained one."""
        if self.test is None:
            raise ValueError("this job has no test loader")
        return evaluate(model or self.model, self.test, num_classes=self.num_classes, view=STUDENT_VIEW,
                        device=device or default_device(), heads=self.heads)


def _loaders(stage: TeacherStage | PretrainStage | DistillStage, manifest: pd.DataFrame, views: dict[str, ViewSpec]) -> dict:
    """The training dataset (every view) and the validation and test loaders (student view) of a
    stage. Validation: one view per clip, at the training batch size; test: the evaluation protocol."""
    data, student = stage.data, views[STUDENT_VIEW]
    val_set = clip_dataset(manifest, validation_split(manifest), {STUDENT_VIEW: student}, train=False, data=data)
    return {
        "train": clip_dataset(manifest, _training_splits(stage, manifest), views, train=True, data=data,
                              seed=stage.train.seed),
        "val": eval_loader(val_set, batch_size=stage.train.batch_size, num_workers=data.num_workers),
        "test": test_loader(manifest, student, stage.evaluation, data),
    }


def _training_splits(stage, manifest: pd.DataFrame) -> tuple[str, ...]:
    """``train``, and the unlabelled transfer set when a distill stage asks for it."""
    if getattr(getattr(stage, "distill", None), "transfer_set", False):
        if not (manifest["split"] == "unlabelled").any():
            raise ValueError("distill.transfer_set is on but the manifest has no unlabelled clips: set data.unlabelled")
        return ("train", "unlabelled")
    return ("train",)


@STAGES.register("teacher")
@STAGES.register("pretrain")
def _teacher_job(stage: TeacherStage | PretrainStage, manifest: pd.DataFrame, teachers: Mapping[str, nn.Module]) -> Job:
    """Train one model with cross-entropy (the ``none`` distiller) on the train split: a teacher
    fine-tuned on the task, or any role's model pretrained on the pretraining corpus."""
    n, heads = num_classes_of(manifest), heads_of(manifest)
    torch.manual_seed(stage.train.seed)  # the initial weights follow the config's seed
    model = build_model(stage.model, output_size(manifest))
    module = build_distiller(DistillConfig(method="none"), model, models.get_spec(stage.model.name), [], heads=heads)
    loaders = _loaders(stage, manifest, {STUDENT_VIEW: stage.model.view()})
    return Job(module=module, train=loaders["train"], train_cfg=stage.train, val=loaders["val"],
               test=loaders["test"], num_classes=n, heads=heads)


@STAGES.register("distill")
def _distill_job(stage: DistillStage, manifest: pd.DataFrame, teachers: Mapping[str, nn.Module]) -> Job:
    """Distil a fresh student from the frozen ``teachers`` ({role: model}) with ``stage.distill``."""
    missing = sorted(set(stage.teachers) - set(teachers))
    if missing:
        raise ValueError(f"the distill stage needs trained teachers for {missing}")
    n, heads = num_classes_of(manifest), heads_of(manifest)
    torch.manual_seed(stage.train.seed)  # the initial student (and the SDB) follow the config's seed
    student = build_model(stage.student, output_size(manifest))
    views = {STUDENT_VIEW: stage.student.view()}
    refs = []
    for role, ref in stage.teachers.items():
        views[role] = ref.view()
        refs.append(TeacherRef(name=role, model=teachers[role].eval(), spec=models.get_spec(ref.name), role=role))
    module = build_distiller(stage.distill, student, models.get_spec(stage.student.name), refs, heads=heads)
    diagnostics = EpochDiagnostics(module)
    loaders = _loaders(stage, manifest, views)
    return Job(module=module, train=loaders["train"], train_cfg=stage.train, val=loaders["val"],
               callbacks=[diagnostics], test=loaders["test"], num_classes=n,
               diagnostics=diagnostics, heads=heads)


def build_job(stage: TeacherStage | PretrainStage | DistillStage, manifest: pd.DataFrame, *,
              teachers: Mapping[str, nn.Module] | None = None) -> Job:
    """Everything ``stage`` needs on ``manifest`` (``teachers``: {role: trained model} to distil from)."""
    return STAGES.get(stage.kind)(stage, manifest, teachers or {})
