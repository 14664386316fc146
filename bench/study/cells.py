"""A cell is one distilled student: (row, seed) with the study's fixed teachers. Each is keyed by
a hash of everything that determines its numbers and cached as one JSON file, written
atomically: an interrupted study resumes where it stopped, and a finished one is re-reported
without training anything."""
from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd
import torch

from bench.methods import cpu_model, log, with_epochs
from bench.study.keys import digest, environment, stage_json
from bench.study.pool import EpochLog, run_tasks
from bench.study.teachers import load_teacher
from dtkd.assemble import build_job, evaluate_model
from dtkd.config import DistillStage, DTKDConfig, ModelRef
from dtkd.data import manifest_fingerprint
from dtkd.distill import DistillConfig
from dtkd.fsutil import atomic_write_bytes

DEFAULT_TEACHERS = (("vit", "vit"), ("cnn", "cnn"))  # (distill-stage role, study teacher id)


@dataclass(frozen=True)
class Row:
    """One line of a table: a change of the config's distill section and the teachers it uses
    (role -> study teacher id); ``labels_per_class`` keeps only that many labelled train clips;
    ``student_scale`` gives the student a crop of that fraction of the baseline teacher's (the
    low-resolution student of pixel distillation; 1 or None: the config's student view)."""

    name: str
    update: Mapping[str, Any] = field(default_factory=dict)
    teachers: tuple[tuple[str, str], ...] = DEFAULT_TEACHERS
    labels_per_class: Optional[int] = None
    student_scale: Optional[float] = None


@dataclass
class StudyContext:
    """What every cell shares: the config (data under the study's cache), the manifest, the
    prepared teachers ({id: metadata with "path" and "state_hash"}) and their ModelRefs, the
    student's pretrained weights (when the study pretrains it), the epoch override and threads."""

    config: DTKDConfig
    manifest: pd.DataFrame
    teachers: dict[str, dict]
    refs: dict[str, ModelRef]
    cache_dir: Path
    threads: int
    epochs: Optional[int] = None
    student: Optional[dict] = None  # {"path", "state_hash"} of the pretrained student


@dataclass
class Cell:
    row: Row
    seed: int
    stage: DistillStage
    manifest: pd.DataFrame
    key: str


# ------------------------------------------------------------------------------ building
def distill_config(base: DistillConfig, update: Mapping[str, Any]) -> DistillConfig:
    return DistillConfig.model_validate({**base.model_dump(), **update})


def few_labels(manifest: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """The manifest with ``per_class`` labelled train clips per class (the first by video id, so
    the choice depends on the data only); the other train clips become the unlabelled transfer
    set (split ``unlabelled``, label -1), which only a row with ``transfer_set`` trains on: the
    user with much raw video and few labels. Validation and test are untouched."""
    train = manifest["split"] == "train"
    keep = manifest[train].sort_values("video_id").groupby("label_idx", sort=True).head(per_class).index
    out = manifest.copy()
    rest = train & ~out.index.isin(keep)
    out.loc[rest, "split"], out.loc[rest, "label"], out.loc[rest, "label_idx"] = "unlabelled", "", -1
    return out.reset_index(drop=True)


def build_stage(ctx: StudyContext, row: Row, seed: int) -> DistillStage:
    """The config's distill stage with the row's distill update, teachers and the cell's seed."""
    base = ctx.config.distill_stage()
    student = base.student
    if ctx.student is not None:
        student = student.model_copy(update={"pretrained": ctx.student["path"]})
    distill = distill_config(ctx.config.distill, row.update)
    if row.student_scale not in (None, 1):
        large = ctx.refs[dict(row.teachers)[distill.baseline_teacher]].view().crop_size
        student = ModelRef.model_validate({**student.model_dump(), "crop_size": round(row.student_scale * large)})
    data = base.model_dump()
    data.update(distill=distill.model_dump(),
                train=with_epochs(base.train, ctx.epochs, seed).model_dump(),
                student=student.model_dump(),
                teachers={role: ctx.refs[tid].model_dump() for role, tid in row.teachers})
    return DistillStage.model_validate(data)


def cell_key(stage: DistillStage, *, teacher_hashes: Mapping[str, str], student_init: Optional[str], seed: int,
             rows: str, threads: int) -> str:
    """Names a cell by content: the validated stage (locations left out), the state hash of each
    teacher (by role) and of the pretrained student, the seed, the data rows, torch and threads."""
    return digest({"stage": stage_json(stage), "teachers": dict(sorted(teacher_hashes.items())),
                   "student_init": student_init, "seed": int(seed), "rows": rows, **environment(threads)})


def make_cell(ctx: StudyContext, row: Row, seed: int) -> Cell:
    stage = build_stage(ctx, row, seed)
    manifest = ctx.manifest if row.labels_per_class is None else few_labels(ctx.manifest, row.labels_per_class)
    # The student starts from the study's pretraining (keyed by its weights) or from the config's
    # own `pretrained` (a file, URL or 'official', keyed by name) or from scratch (None).
    student_init = stage.student.pretrained if ctx.student is None else ctx.student["state_hash"]
    key = cell_key(stage, teacher_hashes={role: ctx.teachers[tid]["state_hash"] for role, tid in row.teachers},
                   student_init=student_init, seed=seed,
                   rows=manifest_fingerprint(manifest), threads=ctx.threads)
    return Cell(row, seed, stage, manifest, key)


# ------------------------------------------------------------------------------- running
def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, tensors and numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _train_record(result, diagnostics: list[dict]) -> dict:
    """Per-epoch history (val top-1, training losses, lr) and per-epoch diagnostic scalars (DATW
    weights per teacher, SD mask fraction): the curves of the report."""
    history = [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history]
    diag = [{"epoch": d["epoch"], **d.get("scalars", {})} for d in diagnostics]
    return {"history": history, "diagnostics": diag, "nonfinite_skipped": result.nonfinite_skipped}


def run_cell(task: dict) -> dict:
    """Worker task: distil, validate and test one cell's student, write its JSON (atomically) and
    return it. Never raises: a failed cell is returned with its error and is not cached, so a
    rerun tries it again."""
    stage: DistillStage = task["stage"]
    out: dict[str, Any] = {"key": task["key"], "row": task["row"], "seed": task["seed"], "error": None}
    t0 = time.perf_counter()
    try:
        manifest = task["manifest"]
        teachers = {role: load_teacher(stage.teachers[role], path, manifest) for role, path in task["teachers"].items()}
        job = build_job(stage, manifest, teachers=teachers)
        progress = EpochLog(f"cell {task['row']} seed {task['seed']}", stage.train.epochs)
        result = job.fit(device="cpu", progress=False, checkpoint_dir=None, callbacks=[progress])
        val = evaluate_model(job.model, stage.student.view(), manifest, stage.evaluation, stage.data,
                             split="val", device="cpu")
        test = job.evaluate(device="cpu")
        out.update(val_top1=val.top1, test_top1=test.top1, test_top5=test.top5, test_n=test.n, val_n=val.n,
                   test_per_class=test.per_class, **_train_record(result, job.diagnostics.records))
    except Exception as err:  # noqa: BLE001 - one cell's failure is a result, not a stop
        out.update(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    out.update(seconds=time.perf_counter() - t0, threads=torch.get_num_threads(), cpu=cpu_model(),
               torch=torch.__version__, stage=stage.model_dump(mode="json"))
    out = _finite(out)
    if out["error"] is None:
        atomic_write_bytes(task["path"], json.dumps(out, indent=1, sort_keys=True).encode())
    return out


def cell_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "cells" / f"{key}.json"


def load_cached(path: Path) -> Optional[dict]:
    """A finished cell's JSON, or None (absent, or unreadable: then it is recomputed)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("error") is None else None


def run_cells(ctx: StudyContext, cells: list[Cell], *, jobs: int) -> tuple[dict[str, dict], dict[str, int]]:
    """Every distinct cell (by key), from the cache or computed. Returns ({key: result},
    {"computed", "cached", "failed"}): the counts say what a rerun recomputed."""
    unique = {c.key: c for c in cells}
    results, todo = {}, []
    for key, cell in unique.items():
        found = load_cached(cell_path(ctx.cache_dir, key))
        if found is not None:
            results[key] = found
        else:
            todo.append(cell)
    counts = {"cached": len(results), "computed": 0, "failed": 0}
    log(f"cells: {len(unique)} distinct, {len(results)} cached, {len(todo)} to run in {jobs} process(es) "
        f"x {ctx.threads} thread(s)")
    payloads = [{"key": c.key, "row": c.row.name, "seed": c.seed, "stage": c.stage, "manifest": c.manifest,
                 "path": str(cell_path(ctx.cache_dir, c.key)),
                 "teachers": {role: ctx.teachers[tid]["path"] for role, tid in c.row.teachers}} for c in todo]
    for i, res in run_tasks(run_cell, payloads, jobs=jobs, threads=ctx.threads):
        results[res["key"]] = res
        counts["failed" if res["error"] else "computed"] += 1
        state = f"FAILED: {res['error']}" if res["error"] else f"val {100 * res['val_top1']:.1f}%, test {100 * res['test_top1']:.1f}%"
        log(f"cell {res['row']} seed {res['seed']}: {state} ({res['seconds']:.0f} s) "
            f"[{counts['computed'] + counts['failed']}/{len(todo)}]")
    return results, counts
