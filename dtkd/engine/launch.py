"""Train from a config, in one process or under torchrun.

    python -m dtkd.engine.launch --config configs/default.yaml --stage distill --out runs/a
    torchrun --nproc_per_node 2 -m dtkd.engine.launch --config ... --stage distill --out runs/a

Stages: ``cnn_teacher`` / ``vit_teacher`` fine-tune a teacher (CE only); ``distill`` trains the
student from teachers whose weights come from ``--teacher cnn=PATH vit=PATH`` (or the config's
``pretrained``). Checkpoints go to ``OUT/checkpoints`` and a re-run with the same ``--out``
resumes from the newest one. Rank 0 writes ``OUT/model.pt`` (the trained model's state dict)
and ``OUT/result.json``.

``--factory pkg.module:function`` replaces the config-driven job builder: it is called as
``function(config_path, args)`` and returns a ``Job``. Tests use it for small models.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dtkd.engine import distributed as D
from dtkd.engine.config import TrainConfig

log = logging.getLogger("dtkd.engine.launch")


@dataclass
class Job:
    """What one training run needs (the Trainer runs ``distiller.prepare`` when it is due)."""

    distiller: nn.Module
    train: Any  # Dataset or DataLoader
    cfg: TrainConfig
    val: Any = None
    callbacks: Sequence[Any] = field(default_factory=list)
    export: Callable[[], dict] | None = None  # state dict to write as OUT/model.pt


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dtkd.engine.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="dtkd YAML config (plain or ZenML run config)")
    p.add_argument("--stage", choices=["cnn_teacher", "vit_teacher", "distill"], default="distill")
    p.add_argument("--out", required=True, type=Path, help="run directory: checkpoints, model.pt, result.json")
    p.add_argument("--teacher", action="extend", nargs="+", default=[], metavar="ROLE=PATH",
                   help="teacher weights for --stage distill: --teacher cnn=A.pt vit=B.pt (or the flag twice)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in OUT")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--factory", default=None, help="module:function building the Job (default: from the dtkd config)")
    return p.parse_args(argv)


def _load_factory(spec: str | None) -> Callable[[str, argparse.Namespace], Job]:
    if spec is None:
        return job_from_config
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--factory must look like package.module:function, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def teacher_weights(items: Sequence[str]) -> dict[str, str]:
    """``["cnn=a.pt", "vit=b.pt"]`` -> {"cnn": "a.pt", "vit": "b.pt"}, with errors that say what is wrong."""
    out = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or role not in ("cnn", "vit") or not path:
            raise ValueError(f"--teacher expects cnn=PATH or vit=PATH, got {item!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--teacher {role}: no such file {path}")
        out[role] = path
    return out


def job_from_config(config_path: str, args: argparse.Namespace) -> Job:
    """The standard jobs of a dtkd config: fine-tune a teacher, or distil the student."""
    from dtkd import models, workflows
    from dtkd.config import TEACHER_ROLES, load_config
    from dtkd.data import ClipDataset
    from dtkd.distill import DistillConfig, TeacherRef, build_distiller

    cfg = load_config(config_path)
    manifest = workflows.load_manifest(cfg.data)
    n = workflows.num_classes_of(manifest)

    def dataset(split: str, views: dict, train: bool, seed: int = 0):
        return ClipDataset(manifest, split, views, train=train, num_clips=1 if train else cfg.evaluation.num_clips,
                           num_crops=1 if train else cfg.evaluation.num_crops, seed=seed, **cfg.data.dataset_kwargs())

    if args.stage != "distill":
        role = args.stage.removesuffix("_teacher")
        built = workflows.build_model(cfg.teacher_ref(role), n)
        distiller = build_distiller(DistillConfig(method="none"), built.model, built.spec, [])
        views, train_cfg = {"student": built.view}, cfg.teacher_train_config(role)
    else:
        student = workflows.build_model(cfg.models.student, n)
        weights = teacher_weights(args.teacher)
        views, refs = {"student": student.view}, []
        for role in TEACHER_ROLES:
            ref = cfg.teacher_ref(role)
            teacher = workflows.build_model(ref, n).model
            if role in weights:
                state = torch.load(weights[role], map_location="cpu", weights_only=True)
                teacher.load_state_dict(state)
            elif not ref.pretrained:
                log.warning("no weights for the %s teacher (--teacher %s=PATH): it is randomly initialised", role, role)
            views[role] = workflows.view_for(ref)
            refs.append(TeacherRef(name=role, model=teacher.eval(), spec=models.get_spec(ref.name), role=role))
        distiller = build_distiller(cfg.distill, student.model, student.spec, refs)
        train_cfg = cfg.distill_training
    return Job(
        distiller=distiller,
        train=dataset("train", views, True, train_cfg.seed),
        val=dataset("test", {"student": views["student"]}, False),
        cfg=train_cfg,
        export=distiller.student_state_dict,
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv: Sequence[str] | None = None) -> dict:
    from dtkd.engine.checkpoint import atomic_save
    from dtkd.engine.trainer import Trainer

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    info, device = D.init_from_env(args.device)
    try:
        job = _load_factory(args.factory)(args.config, args)
        trainer = Trainer(job.distiller, job.cfg, device=device, callbacks=job.callbacks,
                          checkpoint_dir=args.out / "checkpoints", progress=not args.no_progress)
        result = trainer.fit(job.train, job.val, resume=not args.no_resume)
        summary = {"world_size": info.world_size, "history": result.history, "final_metrics": result.final_metrics,
                   "best": result.best, "nonfinite_skipped": result.nonfinite_skipped, "checkpoint": result.checkpoint}
        if info.is_main:
            state = job.export() if job.export else job.distiller.student.state_dict()
            atomic_save(state, args.out / "model.pt")
            (args.out / "result.json").write_text(json.dumps(_jsonable(summary), indent=1))
        return summary
    finally:
        D.cleanup()


if __name__ == "__main__":
    main()
