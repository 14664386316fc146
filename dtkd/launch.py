"""Train from a config, in one process or under torchrun: argument parsing around ``build_job``.

    python -m dtkd.launch --config configs/default.yaml --stage distill --out runs/a
    torchrun --nproc_per_node 2 -m dtkd.launch --config ... --stage distill --out runs/a

Stages: ``cnn_teacher`` / ``vit_teacher`` fine-tune a teacher (CE only); ``distill`` trains the
student from teachers whose weights come from ``--teacher cnn=PATH vit=PATH`` (or the config's
``pretrained``). Checkpoints go to ``OUT/checkpoints`` and a re-run with the same ``--out``
resumes from the newest one. Rank 0 writes ``OUT/model.pt`` (the trained model's state dict)
and ``OUT/result.json``.

``--factory pkg.module:function`` replaces ``job_from_config``: it is called as
``function(config_path, args)`` and returns a ``dtkd.assemble.Job``. Tests use it for small models.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dtkd.assemble import Job, build_job, build_model
from dtkd.config import TEACHER_ROLES, load_config
from dtkd.data import num_classes_of, prepare_manifest
from dtkd.engine import distributed as D

log = logging.getLogger("dtkd.launch")
STAGE_CHOICES = [f"{role}_teacher" for role in TEACHER_ROLES] + ["distill"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dtkd.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="dtkd YAML config (plain or ZenML run config)")
    p.add_argument("--stage", choices=STAGE_CHOICES, default="distill")
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
        if not sep or role not in TEACHER_ROLES or not path:
            raise ValueError(f"--teacher expects cnn=PATH or vit=PATH, got {item!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--teacher {role}: no such file {path}")
        out[role] = path
    return out


def job_from_config(config_path: str, args: argparse.Namespace) -> Job:
    """The stage ``--stage`` of a dtkd config, assembled by ``build_job``."""
    cfg = load_config(config_path)
    weights = teacher_weights(args.teacher)  # bad flags fail before any data is read
    manifest = prepare_manifest(cfg.data)
    if args.stage != "distill":
        return build_job(cfg.teacher_stage(args.stage.removesuffix("_teacher")), manifest)
    n = num_classes_of(manifest)
    teachers = {}
    for role in TEACHER_ROLES:
        ref = cfg.teacher_ref(role)
        teacher = build_model(ref, n)
        if role in weights:
            teacher.load_state_dict(torch.load(weights[role], map_location="cpu", weights_only=True))
        elif not ref.pretrained:
            log.warning("no weights for the %s teacher (--teacher %s=PATH): it is randomly initialised", role, role)
        teachers[role] = teacher
    return build_job(cfg.distill_stage(), manifest, teachers=teachers)


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

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    info, device = D.init_from_env(args.device)
    try:
        job = _load_factory(args.factory)(args.config, args)
        result = job.fit(device=device, checkpoint_dir=args.out / "checkpoints", progress=not args.no_progress,
                         resume=not args.no_resume)
        summary = {"world_size": info.world_size, "history": result.history, "final_metrics": result.final_metrics,
                   "best": result.best, "nonfinite_skipped": result.nonfinite_skipped, "checkpoint": result.checkpoint}
        if info.is_main:
            atomic_save(job.model.state_dict(), args.out / "model.pt")
            (args.out / "result.json").write_text(json.dumps(_jsonable(summary), indent=1))
        return summary
    finally:
        D.cleanup()


if __name__ == "__main__":
    main()
