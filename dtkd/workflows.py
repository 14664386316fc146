"""High-level jobs the pipeline steps call: build the models a config names, make the loaders,
fine-tune a teacher, distil the student, evaluate. Pure core library: no zenml/mlflow/dvc, so the
same jobs run from ZenML steps, from torchrun, or from a notebook.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from dtkd import models
from dtkd.config import EvalConfig, ModelRef
from dtkd.data import ClipDataset, ViewSpec
from dtkd.data.config import DataConfig
from dtkd.distill import DistillConfig, TeacherRef, build_distiller
from dtkd.engine import Trainer, TrainConfig, TrainResult
from dtkd.eval import EvalResult, evaluate

STUDENT_VIEW = "student"


@dataclass
class BuiltModel:
    model: nn.Module
    spec: "models.ModelSpec"
    view: ViewSpec


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def view_for(ref: ModelRef) -> ViewSpec:
    """The clip a model sees: its registry spec's standard input, with the config's overrides."""
    overrides = {"frames": ref.frames, "sampling_rate": ref.sampling_rate, "crop_size": ref.crop_size}
    return ViewSpec.from_spec(models.get_spec(ref.name, **overrides))


def input_spec(ref: ModelRef) -> dict:
    """What a registry entry needs to rebuild this model's test loader: name and view."""
    view = view_for(ref)
    return {
        "model_name": ref.name,
        "frames": view.frames,
        "sampling_rate": view.sampling_rate,
        "crop_size": view.crop_size,
        "mean": list(view.mean),
        "std": list(view.std),
    }


def clip_span(ref: ModelRef) -> int:
    """Source frames one clip of this model covers (frames x sampling rate)."""
    view = view_for(ref)
    return view.frames * view.sampling_rate


def build_model(ref: ModelRef, num_classes: int) -> BuiltModel:
    view = view_for(ref)
    kwargs = dict(ref.overrides)
    if ref.frames:
        kwargs.setdefault("frames", ref.frames)
    if ref.crop_size:
        kwargs.setdefault("crop_size", ref.crop_size)
    if ref.pretrained:
        kwargs["pretrained"] = ref.pretrained
    model = models.build(ref.name, num_classes, **kwargs)
    return BuiltModel(model, models.get_spec(ref.name), view)


def num_classes_of(manifest: pd.DataFrame) -> int:
    return int(manifest["label_idx"].max()) + 1


def make_loader(
    manifest: pd.DataFrame,
    split: str,
    views: dict[str, ViewSpec],
    *,
    train: bool,
    batch_size: int,
    data_cfg: DataConfig,
    seed: int = 0,
    eval_cfg: EvalConfig | None = None,
) -> DataLoader:
    eval_cfg = eval_cfg or EvalConfig()
    dataset = ClipDataset(
        manifest,
        split,
        views,
        train=train,
        num_clips=1 if train else eval_cfg.num_clips,
        num_crops=1 if train else eval_cfg.num_crops,
        seed=seed,
        **data_cfg.dataset_kwargs(),
    )
    if len(dataset) == 0:
        raise ValueError(f"the manifest has no clips in split {split!r}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=data_cfg.num_workers,
        generator=generator,
        persistent_workers=data_cfg.num_workers > 0,
    )


def train_teacher(
    manifest: pd.DataFrame,
    ref: ModelRef,
    train_cfg: TrainConfig,
    data_cfg: DataConfig,
    *,
    callbacks: Sequence = (),
    device: torch.device | None = None,
    checkpoint_dir: str | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Fine-tune one teacher with cross-entropy (the `none` distiller) on the train split."""
    n = num_classes_of(manifest)
    torch.manual_seed(train_cfg.seed)  # the initial weights follow the config's seed too
    built = build_model(ref, n)
    views = {STUDENT_VIEW: built.view}
    distiller = build_distiller(DistillConfig(method="none"), built.model, built.spec, [])
    trainer = Trainer(distiller, train_cfg, device=device or default_device(), callbacks=list(callbacks), checkpoint_dir=checkpoint_dir)
    result = trainer.fit(
        make_loader(manifest, "train", views, train=True, batch_size=train_cfg.batch_size, data_cfg=data_cfg, seed=train_cfg.seed),
        make_loader(manifest, "test", views, train=False, batch_size=train_cfg.batch_size, data_cfg=data_cfg),
    )
    return built.model.eval(), result


def distill_student(
    manifest: pd.DataFrame,
    student_ref: ModelRef,
    teachers: dict[str, tuple[nn.Module, ModelRef]],
    distill_cfg: DistillConfig,
    train_cfg: TrainConfig,
    data_cfg: DataConfig,
    *,
    callbacks: Sequence = (),
    device: torch.device | None = None,
    checkpoint_dir: str | None = None,
) -> tuple[nn.Module, TrainResult, list[dict]]:
    """Distil a fresh student from frozen teachers ({"cnn": (model, ref), "vit": (model, ref)})."""
    n = num_classes_of(manifest)
    torch.manual_seed(train_cfg.seed)  # the initial student (and the SDB) follow the config's seed
    student = build_model(student_ref, n)
    views = {STUDENT_VIEW: student.view}
    refs = []
    for role, (model, ref) in teachers.items():
        views[role] = view_for(ref)
        refs.append(TeacherRef(name=role, model=model, spec=models.get_spec(ref.name), role=role))
    distiller = build_distiller(distill_cfg, student.model, student.spec, refs)
    # Trainer.fit runs distiller.prepare (the closed-form phi fit) itself when the method needs it.
    train_loader = make_loader(manifest, "train", views, train=True, batch_size=train_cfg.batch_size, data_cfg=data_cfg, seed=train_cfg.seed)
    diagnostics: list[dict] = []

    class _Diagnostics:
        def on_epoch_end(self, epoch: int, metrics: dict) -> None:
            diagnostics.append({"epoch": epoch, **distiller.epoch_diagnostics()})

    trainer = Trainer(
        distiller, train_cfg, device=device or default_device(), callbacks=[_Diagnostics(), *callbacks], checkpoint_dir=checkpoint_dir
    )
    val_loader = make_loader(manifest, "test", {STUDENT_VIEW: student.view}, train=False, batch_size=train_cfg.batch_size, data_cfg=data_cfg)
    result = trainer.fit(train_loader, val_loader)
    return distiller.student.eval(), result, diagnostics


def evaluate_model(
    model: nn.Module,
    ref: ModelRef,
    manifest: pd.DataFrame,
    eval_cfg: EvalConfig,
    data_cfg: DataConfig,
    *,
    device: torch.device | None = None,
) -> EvalResult:
    """Multi-view test accuracy of ``model`` on the manifest's test split."""
    loader = make_loader(
        manifest, "test", {STUDENT_VIEW: view_for(ref)}, train=False,
        batch_size=eval_cfg.batch_size, data_cfg=data_cfg, eval_cfg=eval_cfg,
    )
    return evaluate(model, loader, num_classes=num_classes_of(manifest), view=STUDENT_VIEW, device=device or default_device())


def load_manifest(data_cfg: DataConfig) -> pd.DataFrame:
    """The configured dataset's manifest; the embedded synthetic set is generated first when
    missing (deterministic, and reused when present with the same knobs)."""
    from dtkd.data import prepare_manifest

    return prepare_manifest(data_cfg)


def manifest_fingerprint(manifest: pd.DataFrame, split: str | None = None) -> str:
    """Names the data a model saw or was tested on, independently of where the files lie:
    sha256 over the sorted (video_id, label, split) rows (of one split)."""
    import hashlib

    df = manifest if split is None else manifest[manifest["split"] == split]
    rows = sorted(f"{v}\t{lab}\t{s}" for v, lab, s in zip(df["video_id"], df["label"], df["split"]))
    return "manifest:" + hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def cost_metrics(model: nn.Module, ref: ModelRef) -> dict[str, float]:
    """Inference cost of one clip at the model's view: parameters, GFLOPs (fvcore), CPU latency."""
    from dtkd.eval import measure_latency_ms
    from dtkd.eval.complexity import count_flops, count_params

    view = view_for(ref)
    shape = (1, 3, view.frames, view.crop_size, view.crop_size)
    model = model.eval().cpu()
    return {
        "params": float(count_params(model)),
        "gflops": float(count_flops(model, shape)),
        "latency_ms": measure_latency_ms(model, shape),
    }


def flat_scalars(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {"a/b": x}; lists and strings are skipped."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
