"""Short run per registered distillation method on one dataset: every method, same teachers,
same seed, same training config, so that the rows differ only in the loss.

    OMP_NUM_THREADS=2 python bench/methods.py --epochs 4                # every registered method
    OMP_NUM_THREADS=2 python bench/methods.py --epochs 4 --ablations    # + the DT-KD ablations
    python bench/methods.py --methods none kd dtkd --epochs 1

Loads the config (default ``configs/default.yaml``), builds the manifest
(``dtkd.data.prepare_manifest``; the embedded synthetic set, and its clip store when the config
enables one, are generated under ``--data-root``, one directory per set of generator knobs),
fine-tunes the two teachers ONCE (their teacher stage; cached under ``--data-root/teachers`` so a
re-run skips them), then for each method distils a fresh student (the distill stage with that
method) and tests it. Every job is assembled by ``dtkd.assemble.build_job``, as in the pipeline:
nothing here trains or evaluates by itself. An error in one method is recorded and the others
still run.

Progress (and the Trainer's tqdm bars) go to stderr. Prints a Markdown table to stdout, then as
its LAST line one JSON object ``{method: test top-1 in %}`` (``null`` for a method that failed).
``--json-out`` writes every figure (after each method, so an interrupted run keeps its rows).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dtkd.assemble import build_job, build_model, default_device, evaluate_model  # noqa: E402
from dtkd.config import DTKDConfig, load_config  # noqa: E402
from dtkd.data import manifest_fingerprint, num_classes_of, prepare_manifest, prepare_store  # noqa: E402
from dtkd.distill import DISTILLERS, DistillConfig  # noqa: E402
from dtkd.engine import TrainConfig  # noqa: E402
from dtkd.host import cpu_model  # noqa: E402

TEACHER_ROLES = ("vit", "cnn")  # distill_student's roles, in the order the tables list them


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ what to run
def ablation_variants(base: DistillConfig) -> list[tuple[str, dict]]:
    """DT-KD ablations as (name, update of the base distill config): Table 5 (the four weightings,
    with the SDB off as in the paper), Table 6 (the SDB variants; the base's is the ``dtkd`` row),
    and L_SR and L_RKD off (L_SD off is Table 5's row with the base's weighting)."""
    out: list[tuple[str, dict]] = [(f"dtkd weighting={w} sd=off", {"method": "dtkd", "weighting": w, "use_sd": False})
                                   for w in ("uniform", "confidence", "discrepancy", "datw")]
    for s in ("nl", "se", "nl+se"):
        if s != base.sdb:
            out.append((f"dtkd sdb={s}", {"method": "dtkd", "sdb": s}))
    for toggle in ("use_sr", "use_rkd"):
        if getattr(base, toggle):
            out.append((f"dtkd {toggle}=off", {"method": "dtkd", toggle: False}))
    return out


def runs_to_do(base: DistillConfig, methods: list[str], ablations: bool) -> list[tuple[str, dict]]:
    """(row name, DistillConfig) for each method (the config's hyper-parameters, method
    replaced) and, with ``ablations``, each DT-KD variant. Validation errors are left to the
    caller: an unknown method is a row with an error, not a crash."""
    todo: list[tuple[str, dict]] = [(m, {"method": m}) for m in methods]
    if ablations:
        todo += ablation_variants(base)
    dumped = base.model_dump()
    return [(name, {**dumped, **update}) for name, update in todo]


def with_epochs(cfg: TrainConfig, epochs: int | None, seed: int | None) -> TrainConfig:
    """``cfg`` with another epoch count (warm-up capped below it) and seed, re-validated."""
    data = cfg.model_dump()
    if epochs is not None:
        data["epochs"] = epochs
        if data["warmup_epochs"] >= epochs:
            data["warmup_epochs"] = max(0.0, min(data["warmup_epochs"], epochs - 1))
    if seed is not None:
        data["seed"] = seed
    return TrainConfig.model_validate(data)


# ------------------------------------------------------------------ teachers
def _digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _teacher_key(config: DTKDConfig, role: str, train_cfg: TrainConfig, manifest) -> str:
    """Names a trained teacher: its model, its training, and the data (the manifest's rows AND
    the data knobs: the synthetic set keeps its video names when its nuisances change)."""
    ref = config.teacher_ref(role)
    data = config.data.model_dump(mode="json", exclude={"root", "store", "num_workers"})
    return _digest({"ref": ref.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"),
                    "data": data, "rows": manifest_fingerprint(manifest), "torch": torch.__version__})


def bench_data_config(config: DTKDConfig, data_root: Path) -> DTKDConfig:
    """The config with the embedded synthetic set (and its clip store, when enabled) moved under
    ``data_root``, one directory per set of generator knobs: a run never reuses files made with
    other knobs, nor the repository's store (which is keyed by video name, not content)."""
    data = config.data
    if data.dataset != "synthetic":
        return config
    key = _digest(data.synthetic.model_dump(mode="json"), 8)
    update: dict[str, Any] = {"root": Path(data_root) / f"synthetic-{key}"}
    if data.store.enabled:
        update["store"] = data.store.model_copy(update={"dir": Path(data_root) / f"store-{key}"})
    return config.model_copy(update={"data": data.model_copy(update=update)})


def get_teachers(config: DTKDConfig, manifest, *, epochs: int | None, seed: int | None, device,
                 cache_dir: Path | None, eval_teachers: bool = True) -> tuple[dict, dict]:
    """Fine-tune (or load from the cache) both teachers. Returns ({role: model},
    {role: {"top1", "top5", "seconds", "cached"}})."""
    teachers, info = {}, {}
    n = num_classes_of(manifest)
    for role in TEACHER_ROLES:
        ref = config.teacher_ref(role)
        # This teacher's own overrides (e.g. the ViT's lr), with the run's epochs and seed.
        role_cfg = with_epochs(config.teacher_train_config(role), epochs, seed)
        path = cache_dir / f"{role}-{ref.name}-{_teacher_key(config, role, role_cfg, manifest)}.pt" if cache_dir else None
        t0 = time.perf_counter()
        if path is not None and path.exists():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = build_model(ref, n)
            model.load_state_dict(blob["state_dict"])
            model.eval()
            meta = {"seconds": float(blob["seconds"]), "cached": True}
            log(f"teacher {role} ({ref.name}): loaded from {path}")
        else:
            log(f"teacher {role} ({ref.name}): training {role_cfg.epochs} epochs, lr {role_cfg.lr}")
            job = build_job(config.teacher_stage(role).model_copy(update={"train": role_cfg}), manifest)
            job.fit(device=device)
            model = job.model
            meta = {"seconds": time.perf_counter() - t0, "cached": False}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                            "seconds": meta["seconds"]}, path)
        if eval_teachers:
            res = evaluate_model(model, ref.view(), manifest, config.evaluation, config.data, device=device)
            meta.update(top1=res.top1, top5=res.top5, test_loss=res.loss, n=res.n)
            log(f"teacher {role}: test top-1 {100 * res.top1:.2f}%")
        teachers[role] = model
        info[role] = {"name": ref.name, **meta}
    return teachers, info


# ------------------------------------------------------------------ one method
def run_one(name: str, distill_data: dict, config: DTKDConfig, manifest, teachers: dict,
            train_cfg: TrainConfig, *, device) -> dict[str, Any]:
    """Distil and test one student; never raises (the error is in the row)."""
    row: dict[str, Any] = {"method": name, "error": None}
    t0 = time.perf_counter()
    try:
        distill_cfg = DistillConfig.model_validate(distill_data)
        row["config"] = {k: v for k, v in distill_cfg.model_dump().items() if v != DistillConfig().model_dump().get(k)}
        stage = config.distill_stage().model_copy(update={"distill": distill_cfg, "train": train_cfg})
        job = build_job(stage, manifest, teachers=teachers)
        result = job.fit(device=device)
        diagnostics = job.diagnostics.records
        row["train_seconds"] = time.perf_counter() - t0
        res = job.evaluate(device=device)
        final = result.history[-1] if result.history else {}
        row.update(
            top1=res.top1, top5=res.top5, test_loss=res.loss, n_test=res.n, per_class=res.per_class,
            final_train={k: v for k, v in final.items() if k.startswith("train_")},
            val_top1_history=[h.get("val_top1") for h in result.history],
            train_history=[{k: v for k, v in h.items() if k.startswith("train_")} for h in result.history],
            nonfinite_skipped=result.nonfinite_skipped,
            diagnostics_last={k: v for k, v in (diagnostics[-1].get("scalars", {}) if diagnostics else {}).items()},
        )
        bad = [k for k, v in row["final_train"].items() if isinstance(v, float) and not math.isfinite(v)]
        row["nonfinite_terms"] = bad
    except Exception as err:  # noqa: BLE001 - one method's failure is a result, not a stop
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc()
        log(f"{name}: FAILED: {row['error']}")
    row["seconds"] = time.perf_counter() - t0
    return row


def run_methods(config: DTKDConfig, *, methods: list[str] | None = None, ablations: bool = False,
                epochs: int | None = None, teacher_epochs: int | None = None, seed: int | None = None,
                data_root: Path | None = None, device=None, cache_teachers: bool = True,
                manifest=None, on_row=None, only: list[str] | None = None) -> dict[str, Any]:
    """The whole measurement; returns {"teachers", "rows", "setup"}. ``data_root`` (when the
    dataset is the embedded synthetic one) is where it is generated; teachers are cached under
    ``data_root/teachers``. ``on_row(report_so_far)`` is called after each method (partial
    results survive an interrupted run). ``only``: run just the rows with these names (e.g. to
    finish an interrupted ablation run; the teachers come from the cache)."""
    device = torch.device(device) if device is not None else default_device()
    methods = list(methods) if methods else list(DISTILLERS.names())
    if data_root is not None:
        config = bench_data_config(config, Path(data_root))
    if manifest is None:
        manifest = prepare_manifest(config.data)
    if "ok" in manifest.columns:  # flagged bad videos: leave them out, as the quality gate would
        manifest = manifest[manifest["ok"].astype(bool)].reset_index(drop=True)
    if data_root is not None and config.data.store.enabled:  # our own store (built or reused)
        log(f"clip store: {config.data.store.dir}")
        prepare_store(config.data, manifest)
    distill_train = with_epochs(config.distill_train_config(), epochs, seed)
    teacher_epochs = teacher_epochs if teacher_epochs is not None else epochs
    splits = manifest["split"].value_counts().to_dict()
    setup = {"num_classes": num_classes_of(manifest), "splits": {k: int(v) for k, v in splits.items()},
             "distill_epochs": distill_train.epochs,
             "teacher_epochs": teacher_epochs if teacher_epochs is not None else config.teacher_train_config("cnn").epochs,
             "seed": distill_train.seed,
             "device": str(device), "torch_threads": torch.get_num_threads(), "cpu": cpu_model(),
             "data_root": str(config.data.root)}
    log(f"setup: {setup}")
    cache_dir = Path(data_root) / "teachers" if (cache_teachers and data_root is not None) else None
    t0 = time.perf_counter()
    teachers, teacher_info = get_teachers(config, manifest, epochs=teacher_epochs, seed=distill_train.seed,
                                          device=device, cache_dir=cache_dir)
    setup["teacher_seconds"] = time.perf_counter() - t0
    rows: list[dict] = []
    report = {"setup": setup, "config": config.model_dump(mode="json"), "teachers": teacher_info, "rows": rows}
    todo = runs_to_do(config.distill, methods, ablations)
    if only:
        unknown = sorted(set(only) - {n for n, _ in todo})
        if unknown:
            raise ValueError(f"--only names no row: {unknown}; rows: {[n for n, _ in todo]}")
        todo = [(n, d) for n, d in todo if n in only]
    for name, distill_data in todo:
        log(f"{name}: distilling {distill_train.epochs} epochs")
        row = run_one(name, distill_data, config, manifest, teachers, distill_train, device=device)
        if row["error"] is None:
            log(f"{name}: test top-1 {100 * row['top1']:.2f}%  ({row['seconds']:.0f} s)")
        rows.append(row)
        if on_row is not None:
            on_row(report)
    setup["total_seconds"] = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------ report
def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _terms(final: dict) -> str:
    parts = []
    for k, v in final.items():
        if k.startswith("train_loss/"):
            parts.append(f"{k.split('/', 1)[1]} {v:.3g}")
    return ", ".join(parts)


def markdown(report: dict) -> str:
    s = report["setup"]
    chance = 1.0 / s["num_classes"]
    lines = [
        f"{s['num_classes']} classes, splits {s['splits']}, teachers {s['teacher_epochs']} epochs, "
        f"students {s['distill_epochs']} epochs, seed {s['seed']}, device {s['device']}; chance = {100 * chance:.1f}%.",
    ]
    cfg = report.get("config")
    if cfg:
        d, syn = cfg["distill"], cfg["data"].get("synthetic") or {}
        lines.append(f"Base distill config (each method's own hyper-parameters from it): alpha {d['alpha']}, "
                     f"beta {d['beta']}, gamma {d['gamma']}, tau {d['tau']}, weighting {d['weighting']}, sdb {d['sdb']}"
                     + (f"; synthetic difficulty {syn.get('difficulty', 'default')}" if cfg["data"]["dataset"] == "synthetic" else "")
                     + ".")
    lines += [
        "",
        "| Teacher | Model | Test top-1 % | Test top-5 % | Train s |",
        "|---|---|---:|---:|---:|",
    ]
    for role, t in report["teachers"].items():
        cached = " (cached)" if t.get("cached") else ""
        lines.append(f"| {role} | {t['name']} | {_pct(t.get('top1'))} | {_pct(t.get('top5'))} | {t['seconds']:.0f}{cached} |")
    lines += ["", "| Method | Test top-1 % | Test top-5 % | Final train loss | Final train terms (unweighted) | "
                  "Train top-1 % | Wall s | Status |",
              "|---|---:|---:|---:|---|---:|---:|---|"]
    for r in report["rows"]:
        if r["error"]:
            lines.append(f"| {r['method']} | — | — | — | — | — | {r['seconds']:.0f} | error: {r['error'][:120]} |")
            continue
        f = r["final_train"]
        notes = []
        if r.get("nonfinite_terms"):
            notes.append(f"non-finite {', '.join(r['nonfinite_terms'])}")
        if r.get("nonfinite_skipped"):
            notes.append(f"{r['nonfinite_skipped']} steps skipped (non-finite)")
        if r["top1"] <= chance + 1e-9:
            notes.append("at/below chance")
        status = "; ".join(notes) or "ok"
        lines.append(f"| {r['method']} | {_pct(r['top1'])} | {_pct(r['top5'])} | {f.get('train_loss', float('nan')):.3f} | "
                     f"{_terms(f)} | {_pct(f.get('train_top1'))} | {r['seconds']:.0f} | {status} |")
    return "\n".join(lines)


def summary(report: dict) -> dict[str, float | None]:
    return {r["method"]: (None if r["error"] else round(100 * r["top1"], 2)) for r in report["rows"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the config's); "
                        "also the teachers' unless --teacher-epochs")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"registered methods (default: all, {' '.join(DISTILLERS.names())}); commas also work")
    parser.add_argument("--ablations", action="store_true", help="also the DT-KD ablations (weighting, SDB, each term off)")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "bench_methods",
                        help="where the embedded synthetic set (+ store) is generated and teachers cached ('tmp': a temporary dir)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only these rows of the list (quote names with spaces: 'dtkd sdb=nl')")
    parser.add_argument("--no-teacher-cache", action="store_true", help="always train the teachers")
    parser.add_argument("--seed", type=int, default=None, help="default: distill_training.seed")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json-out", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    methods = [m for item in (args.methods or []) for m in item.split(",") if m] or None

    config = load_config(args.config)
    tmp = None
    data_root = args.data_root
    if str(data_root) == "tmp":
        tmp = tempfile.TemporaryDirectory(prefix="dtkd-bench-methods-")
        data_root = Path(tmp.name)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()

    def write_json(report: dict) -> None:
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(report, indent=1, default=str))

    try:
        report = run_methods(config, methods=methods, ablations=args.ablations, epochs=args.epochs,
                             teacher_epochs=args.teacher_epochs, seed=args.seed, data_root=data_root,
                             device=args.device, cache_teachers=not args.no_teacher_cache, on_row=write_json,
                             only=args.only)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["setup"].update(started=started, wall_seconds=time.perf_counter() - t0, config=str(args.config),
                           machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                           command=" ".join(sys.argv))
    write_json(report)
    print(markdown(report))
    print(f"\nwall time {report['setup']['wall_seconds']:.0f} s")
    print(json.dumps(summary(report)))
    return 1 if any(r["error"] for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
