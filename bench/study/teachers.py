"""The study's teachers, prepared once and fixed for every cell, as in the paper: each is
pretrained on the pretraining corpus (when its role is in ``pretraining.roles``), then fine-tuned
on the target data. Trained weights are cached under the study's cache folder by a key of
everything that determines them, so a rerun (or a resumed study) loads them.

A pretraining the repository ships the backbone of (``pretraining.shipped``, dtkd_ops.shipped:
the record's key is exactly this stage and corpus) is loaded from there, as the pipeline does,
not trained again; its key is then the file's sha256, so ``pretraining.shipped: null`` trains and
caches apart."""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from bench.methods import log, with_epochs
from bench.study.keys import digest, environment, stage_json, state_hash
from bench.study.pool import EpochLog
from dtkd.assemble import build_job, build_model, evaluate_model
from dtkd.config import DTKDConfig, ModelRef, validate_config
from dtkd.data import manifest_fingerprint, num_classes_of
from dtkd.fsutil import atomic_write_bytes
from dtkd.models import model_options

BASE_TEACHERS = ("vit", "cnn")  # the config's teachers; their ids are their roles


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher of the study: ``id`` names it in tables, ``role`` is the distill-stage slot it
    fills (``vit`` or ``cnn``), ``model`` its registry name (None: the config's model)."""

    id: str
    role: str
    model: Optional[str] = None
    note: str = ""


def teacher_specs(extra: dict[str, str] | None = None) -> list[TeacherSpec]:
    """The config's two teachers, then one extra per role of ``extra`` ({role: model name}),
    Table 7's second ViT and second CNN."""
    specs = [TeacherSpec(role, role) for role in BASE_TEACHERS]
    for role, name in (extra or {}).items():
        specs.append(TeacherSpec(f"{role}2", role, name, note=f"second {'ViT' if role == 'vit' else 'CNN'} (Table 7)"))
    return specs


def config_for(config: DTKDConfig, spec: TeacherSpec) -> DTKDConfig:
    """The config with ``spec``'s model in its role's slot. An extra teacher keeps the clip its
    role's teacher sees (frames, rate, crop resolved from the config; the model's own standard
    clip can be paper-sized), the role's training overrides, and those model options of the model
    it replaces that the new one accepts too (e.g. the ViT's ``stem``); the others are dropped."""
    if spec.model is None:
        return config
    key = f"{spec.role}_teacher"
    old = config.teacher_ref(spec.role)
    view = old.view()
    accepted = model_options(spec.model)
    data = config.model_dump(mode="json")
    data["models"][key].update(name=spec.model, frames=view.frames, sampling_rate=view.sampling_rate,
                               crop_size=view.crop_size, pretrained=None,
                               overrides={k: v for k, v in old.overrides.items() if k in accepted})
    return validate_config(data, source=f"study teacher {spec.id}")


def study_ref(config: DTKDConfig, spec: TeacherSpec) -> ModelRef:
    """The distill stage's ModelRef of ``spec`` (its model and clip; weights are loaded apart)."""
    ref = config_for(config, spec).teacher_ref(spec.role)
    return ModelRef.model_validate({k: getattr(ref, k) for k in ModelRef.model_fields} | {"pretrained": None})


# --------------------------------------------------------------------------------- keys
def pretrain_key(stage, corpus, threads: int) -> str:
    return digest({"stage": stage_json(stage), "rows": manifest_fingerprint(corpus), **environment(threads)})


def finetune_key(stage, manifest, pretrained_key: Optional[str], threads: int) -> str:
    return digest({"stage": stage_json(stage), "rows": manifest_fingerprint(manifest),
                   "pretrained": pretrained_key or stage.model.pretrained, **environment(threads)})


# ------------------------------------------------------------------------------ caching
def _save(path: Path, state: dict, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> tuple[dict, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["state_dict"], blob["meta"]


def _fit(stage, manifest, name: str):
    """Train ``stage`` (a pretrain or teacher stage) on the CPU, without checkpoints; its job."""
    job = build_job(stage, manifest)
    job.fit(device="cpu", progress=False, checkpoint_dir=None, callbacks=[EpochLog(name, stage.train.epochs)])
    return job


@dataclass
class Planned:
    """A model to train, named before training: its stage, key and weights file (``pre``: the
    pretraining it starts from, planned the same way)."""

    stage: Any
    key: str
    path: Path
    pre: Optional["Planned"] = None
    shipped: Any = None  # a pretraining the repository ships (dtkd_ops.shipped.Shipped): loaded, not trained


def plan_pretrain(config: DTKDConfig, role: str, corpus, *, cache_dir: Path, epochs: Optional[int],
                  threads: int) -> Planned:
    stage = config.pretrain_stage(role)
    stage = stage.model_copy(update={"train": with_epochs(stage.train, epochs, None)})
    shipped = _shipped(config, stage, corpus)
    if shipped is not None:
        key = digest({"shipped": shipped.meta["sha256"]})
        return Planned(stage, key, cache_dir / "pretrained" / f"{role}-{stage.model.name}-shipped-{key}.pt",
                       shipped=shipped)
    key = pretrain_key(stage, corpus, threads)
    return Planned(stage, key, cache_dir / "pretrained" / f"{role}-{stage.model.name}-{key}.pt")


def _shipped(config: DTKDConfig, stage, corpus):
    """The backbone ``pretraining.shipped`` holds for exactly this pretraining, or None."""
    from dtkd_ops.shipped import find_shipped
    from dtkd_ops.shipped import pretrain_key as shipped_key

    pre = config.pretraining
    return find_shipped(pre.shipped, f"{pre.registry_prefix}-{stage.role}", shipped_key(stage, corpus))


def plan(task: dict[str, Any]) -> Planned:
    """What a preparation task trains: the student's pretraining (spec role ``student``), or a
    teacher's fine-tuning from its role's pretraining (when the role is in ``pretraining.roles``)."""
    spec: TeacherSpec = task["spec"]
    cache_dir, epochs, threads = Path(task["cache_dir"]), task["epochs"], task["threads"]
    if spec.role == "student":
        return plan_pretrain(task["config"], "student", task["corpus"], cache_dir=cache_dir, epochs=epochs,
                             threads=threads)
    config = config_for(task["config"], spec)
    stage = config.teacher_stage(spec.role)
    stage = stage.model_copy(update={"train": with_epochs(stage.train, epochs, None)})
    pre = None
    if spec.role in config.pretraining.roles and not stage.model.pretrained:  # else: its own weights
        pre = plan_pretrain(config, spec.role, task["corpus"], cache_dir=cache_dir, epochs=epochs, threads=threads)
        stage = stage.model_copy(update={"model": stage.model.model_copy(update={"pretrained": str(pre.path)})})
    key = finetune_key(stage, task["manifest"], pre and pre.key, threads)
    return Planned(stage, key, cache_dir / "teachers" / f"{spec.id}-{stage.model.name}-{key}.pt", pre)


def cached(task: dict[str, Any]) -> Optional[dict]:
    """The task's metadata when its weights are in the cache (checked before starting workers)."""
    p = plan(task)
    if not p.path.exists():
        return None
    state, meta = _load(p.path)
    if p.pre is None and p.stage.model.pretrained and not meta.get("pretrained"):  # cached before "from" was kept
        meta["pretrained"] = {"from": p.stage.model.pretrained}
    if task["spec"].role != "student" and "train_top1" not in meta:  # cached before it was measured
        teacher = load_teacher(p.stage.model.model_copy(update={"pretrained": None}), str(p.path), task["manifest"])
        meta["train_top1"] = _train_top1(teacher, p.stage, task["manifest"])
        _save(p.path, state, meta)
    return {**meta, "path": str(p.path), "cached": True}


def _train_top1(model, stage, manifest) -> float:
    """The teacher's top-1 on the clips the student trains on (evaluation protocol): how often its
    soft targets point at the label there."""
    return evaluate_model(model, stage.model.view(), manifest, stage.evaluation, stage.data, split="train",
                          device="cpu").top1


def _pretrain(p: Planned, corpus) -> dict:
    """Train a planned pretraining (or load it); its metadata, "path" included."""
    if p.path.exists():
        return {**_load(p.path)[1], "path": str(p.path), "cached": True}
    if p.shipped is not None:
        from dtkd_ops.shipped import load_state_dict

        state, record = load_state_dict(p.shipped), p.shipped.meta
        log(f"pretrain {p.stage.role}: the shipped {p.shipped.weights} (trained on {record['trained'].get('cpu')}, "
            f"{record['trained'].get('threads')} threads)")
        meta = {"key": p.key, "state_hash": state_hash(state), "corpus_test_top1": record["corpus_test_top1"],
                "seconds": 0.0, "source": f"shipped:{p.shipped.weights.name}", "trained": record.get("trained", {})}
        _save(p.path, state, meta)
        return {**meta, "path": str(p.path), "cached": False}
    t0 = time.perf_counter()
    log(f"pretrain {p.stage.role} ({p.stage.model.name}): {p.stage.train.epochs} epochs on {len(corpus)} corpus clips")
    job = _fit(p.stage, corpus, f"pretrain {p.stage.role}")
    state = job.model.state_dict()
    meta = {"key": p.key, "state_hash": state_hash(state), "corpus_test_top1": job.evaluate(device="cpu").top1,
            "seconds": time.perf_counter() - t0}
    _save(p.path, state, meta)
    return {**meta, "path": str(p.path), "cached": False}


def prepare(task: dict[str, Any]) -> dict:
    """Worker task: one teacher pretrained (when planned), fine-tuned and evaluated on val and
    test, or the student's pretraining; loaded from the cache when there. Its metadata."""
    spec: TeacherSpec = task["spec"]
    p = plan(task)
    if spec.role == "student":
        return _pretrain(p, task["corpus"])
    if p.path.exists():
        return {**_load(p.path)[1], "path": str(p.path), "cached": True}
    pre = None if p.pre is None else _pretrain(p.pre, task["corpus"])
    t0 = time.perf_counter()
    stage, manifest = p.stage, task["manifest"]
    log(f"teacher {spec.id} ({stage.model.name}): fine-tuning {stage.train.epochs} epochs")
    job = _fit(stage, manifest, f"teacher {spec.id}")
    val = evaluate_model(job.model, stage.model.view(), manifest, stage.evaluation, stage.data, split="val", device="cpu")
    test = job.evaluate(device="cpu")
    state = job.model.state_dict()
    meta = {"id": spec.id, "role": spec.role, "model": stage.model.name, "note": spec.note, "key": p.key,
            "state_hash": state_hash(state), "val_top1": val.top1, "test_top1": test.top1, "test_top5": test.top5,
            "train_top1": _train_top1(job.model, stage, manifest),
            "pretrained": ({"from": stage.model.pretrained} if stage.model.pretrained else None) if pre is None
            else {k: pre[k] for k in ("key", "corpus_test_top1", "seconds", "source") if k in pre},
            "seconds": time.perf_counter() - t0 + (0.0 if pre is None or pre["cached"] else pre["seconds"])}
    _save(p.path, state, meta)
    log(f"teacher {spec.id}: val top-1 {100 * val.top1:.1f}%, test top-1 {100 * test.top1:.1f}%")
    return {**meta, "path": str(p.path), "cached": False}


def load_teacher(ref: ModelRef, path: str, manifest) -> torch.nn.Module:
    """A prepared teacher, rebuilt from its ModelRef and its cached fine-tuned weights."""
    model = build_model(ref, num_classes_of(manifest))
    state, _ = _load(Path(path))
    model.load_state_dict(state)
    return model.eval()
