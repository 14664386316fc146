"""The reproduction study, one command (issue 11): the paper's tables on the embedded benchmark,
every row over several seeds, with paired intervals that say whether a gain is more than noise.

    OMP_NUM_THREADS=1 python bench/reproduce.py --quick              # CE, KD-ViT, KD-CNN, DT-KD x 3 seeds
    OMP_NUM_THREADS=1 python bench/reproduce.py                      # Tables 1, 5, 6, 7, 8, terms, transfer x 5 seeds
    OMP_NUM_THREADS=1 python bench/reproduce.py --tables 1 8 --seeds 3 --jobs 2 --threads 1

1. Teachers, once for the whole study (as in the paper): each starts from its ``pretrained``
   weights (a registry reference is resolved as the pipeline does: ``make pretrain`` first), or
   else is pretrained here on the corpus (``pretraining.data``, when its role is in
   ``pretraining.roles``), then fine-tuned on the target data; Table 7 adds a second ViT and a second CNN (``--extra-vit``, ``--extra-cnn``).
   Cached under ``--cache-dir`` by a hash of everything that determines them.
2. Cells: one distilled student per (row, seed), the distill stage with the row's distill
   settings and the seed as training seed, tested on val and test. Each is cached as a JSON file
   named by a hash of its inputs (the validated stage, the teachers' weights, the seed, the data
   rows, torch and the thread count): an interrupted study resumes, a finished one re-reports
   without training. Cells run in ``--jobs`` spawned processes of ``--threads`` torch threads.
3. Statistics: mean ± std over seeds; paired differences with CE and with the best
   single-teacher baseline (chosen on validation), each with a 95% bootstrap interval over seeds.
4. Writes ``results.md``, ``results.json`` and ``results/*.png`` under ``--out-dir``.

Every job is assembled by ``dtkd.assemble.build_job``: nothing here trains or evaluates by itself.
Progress goes to stderr; the LAST stdout line is one JSON object: ``ce``, ``dtkd``,
``best_baseline`` (mean test top-1, fractions), ``best_baseline_name``, ``delta_ce_ci``,
``delta_best_ci`` (95% intervals of DT-KD's paired gain), ``teachers`` ({role: test top-1}), ``seeds``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.methods import bench_data_config, cpu_model, log, with_epochs  # noqa: E402
from bench.study import analysis as an  # noqa: E402
from bench.study import plots  # noqa: E402
from bench.study.cells import StudyContext, make_cell, run_cells  # noqa: E402
from bench.study.cost import table8  # noqa: E402
from bench.study.pool import run_tasks  # noqa: E402
from bench.study.report import write  # noqa: E402
from bench.study.tables import CE, CE_REFERENCE, EXTRA_TABLES, TABLES, TITLES, study_tables  # noqa: E402
from bench.study.teachers import TeacherSpec, cached, prepare, study_ref, teacher_specs  # noqa: E402
from dtkd.config import DTKDConfig, load_config  # noqa: E402
from dtkd.data import class_names, num_classes_of, prepare_manifest, prepare_store  # noqa: E402

QUICK_SEEDS, FULL_SEEDS = 3, 5
EXTRA_TEACHERS = {"vit": "swin3d_tiny", "cnn": "i3d_tiny"}
SUBSTITUTION = ("Table 7's second teachers: the paper's families at CPU size, the second ViT {vit} (a Video Swin "
                "with the widths of mvit_tiny) and the second CNN {cnn} (an I3D); both see the clip of the teacher "
                "they replace, keep its model options where they accept them (the ViT's conv stem), and go "
                "through the same pretraining and fine-tuning.")


# ------------------------------------------------------------------------------ data
def study_config(config: DTKDConfig, cache_dir: Path) -> DTKDConfig:
    """The config with the target set and the pretraining corpus generated under the study's
    cache (one folder per set of generator knobs), never over the repository's data."""
    root = cache_dir / "data"
    data = bench_data_config(config, root).data
    corpus = bench_data_config(config.model_copy(update={"data": config.pretraining.data}), root).data
    return config.model_copy(update={"data": data, "pretraining": config.pretraining.model_copy(update={"data": corpus})})


def load_manifest(data_cfg) -> Any:
    """The clean manifest of a data config (flagged bad videos left out, as the quality gate
    would), its clip store built when the config enables one."""
    manifest = prepare_manifest(data_cfg)
    if "ok" in manifest.columns:
        manifest = manifest[manifest["ok"].astype(bool)].reset_index(drop=True)
    prepare_store(data_cfg, manifest)
    return manifest


def _with_registry_refs(config: DTKDConfig, replace) -> DTKDConfig:
    """The config with each model whose ``pretrained`` is a registry reference
    (``models:/name@alias``) passed through ``replace(key, role, ref)``; None keeps it."""
    from dtkd_ops.pretrained import is_registry_uri

    update = {}
    for key, role in (("student", "student"), ("cnn_teacher", "cnn"), ("vit_teacher", "vit")):
        ref = getattr(config.models, key)
        new = replace(key, role, ref) if is_registry_uri(ref.pretrained) else None
        if new is not None:
            update[key] = new
    return config.model_copy(update={"models": config.models.model_copy(update=update)}) if update else config


def resolve_weights(config: DTKDConfig) -> DTKDConfig:
    """The config with every registry reference (what ``pipelines.pretraining`` registered)
    replaced by the weights file it names, as the training pipeline's steps do: a teacher that has
    weights is fine-tuned from them, not pretrained again."""
    from dtkd_ops.home import tracking_uri
    from dtkd_ops.pretrained import resolve_ref

    def resolve(key, role, ref):
        try:
            return resolve_ref(ref, tracking_uri=tracking_uri())
        except ValueError as err:
            raise SystemExit(f"models.{key}.pretrained: {err}") from None

    return _with_registry_refs(config, resolve)


def pretrain_in_study(config: DTKDConfig) -> DTKDConfig:
    """The config with the registry references of the roles in ``pretraining.roles`` dropped: the
    study pretrains those models itself on the corpus (cached like every cell), so it needs no
    registry and a fresh clone reproduces it with one command."""
    roles = config.pretraining.roles
    return _with_registry_refs(
        config, lambda key, role, ref: ref.model_copy(update={"pretrained": None}) if role in roles else None)


def check_validation(manifest) -> None:
    if not (manifest["split"] == "val").any():
        raise SystemExit("the study chooses on a validation split and the target manifest has none: set "
                         "data.synthetic.clips_per_class.val or data.val.fraction in the config")


# --------------------------------------------------------------------------- teachers
def prepare_models(config: DTKDConfig, specs: list[TeacherSpec], manifest, corpus, *, cache_dir: Path,
                   epochs: Optional[int], jobs: int, threads: int) -> tuple[dict, Optional[dict]]:
    """Every teacher (and the student's pretraining when ``pretraining.roles`` has it), in
    parallel. Returns ({teacher id: metadata}, student pretraining metadata or None)."""
    todo = list(specs)
    if "student" in config.pretraining.roles:
        todo.append(TeacherSpec("student", "student"))
    payloads = [{"spec": s, "config": config, "manifest": manifest, "corpus": corpus, "cache_dir": str(cache_dir),
                 "epochs": epochs, "threads": threads} for s in todo]
    t0 = time.perf_counter()
    done = {s.id: meta for s, meta in ((s, cached(p)) for s, p in zip(todo, payloads)) if meta is not None}
    missing = [(s, p) for s, p in zip(todo, payloads) if s.id not in done]
    for i, meta in run_tasks(prepare, [p for _, p in missing], jobs=jobs, threads=threads):
        done[missing[i][0].id] = meta
    log(f"teachers ready in {time.perf_counter() - t0:.0f} s ({len(todo) - len(missing)} of {len(todo)} from the cache)")
    student = done.pop("student", None)
    return {s.id: done[s.id] for s in specs}, student


# ------------------------------------------------------------------------------ study
def only_rows(row_tables: dict[str, list], names: list[str]) -> dict[str, list]:
    """Each table cut to the rows named (CE, every row's reference, always kept); a name that is in
    no table is an error naming it and the rows there are."""
    known = {r.name for rows in row_tables.values() for r in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--rows: no row {', '.join(map(repr, unknown))} in the tables asked for; rows there: "
                         f"{', '.join(sorted(known))}")
    keep = set(names) | {CE.name}
    return {t: [r for r in rows if r.name in keep] for t, rows in row_tables.items()
            if any(r.name in keep and r.name != CE.name for r in rows)}


def run_study(config: DTKDConfig, *, tables: list[str], quick: bool = False, seeds: int, jobs: int, threads: int,
              cache_dir: Path, epochs: Optional[int] = None, extra: Optional[dict[str, str]] = None,
              transfer: bool = False, latency_repeats: int = 20, pretrained: str = "study",
              rows: Optional[list[str]] = None) -> dict[str, Any]:
    """The whole study; returns everything results.json holds (plots: ``make_plots``).
    ``pretrained``: ``study`` (pretrain the roles of ``pretraining.roles`` here) or ``registry``
    (use the weights ``make pretrain`` registered)."""
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    config = resolve_weights(config) if pretrained == "registry" else pretrain_in_study(config)
    config = study_config(config, cache_dir)
    manifest = load_manifest(config.data)
    check_validation(manifest)
    pretraining_used = any(r in config.pretraining.roles for r in ("cnn", "vit", "student"))
    corpus = load_manifest(config.pretraining.data) if pretraining_used else None
    extra = (extra if extra is not None else EXTRA_TEACHERS) if ("7" in tables and not quick) else {}
    specs = teacher_specs(extra)
    row_tables, notes = study_tables(config.distill, tables, quick=quick, teacher_ids=[s.id for s in specs],
                                     transfer=transfer)
    if rows:
        row_tables = only_rows(row_tables, rows)
    if extra:
        notes.append(SUBSTITUTION.format(**{"vit": extra.get("vit", "—"), "cnn": extra.get("cnn", "—")}))
    teachers, student = prepare_models(config, specs, manifest, corpus, cache_dir=cache_dir, epochs=epochs,
                                       jobs=jobs, threads=threads)
    ctx = StudyContext(config=config, manifest=manifest, teachers=teachers,
                       refs={s.id: study_ref(config, s) for s in specs}, cache_dir=cache_dir, threads=threads,
                       epochs=epochs, student=student)
    seed_list = list(range(seeds))
    cells = [make_cell(ctx, row, seed) for row in _study_rows(row_tables) for seed in seed_list]
    results, counts = run_cells(ctx, cells, jobs=jobs)
    study = assemble(ctx, row_tables, cells, results, notes=notes)
    study["setup"] = _setup(config, manifest, seeds=seed_list, jobs=jobs, threads=threads, epochs=epochs, counts=counts,
                            quick=quick, tables=list(row_tables), latency_repeats=latency_repeats)
    if "8" in row_tables:
        study["table8"] = table8(cells[0].stage.student, ctx.refs, teachers, study["analysis"]["rows"],
                                 num_classes_of(manifest), repeats=latency_repeats, threads=threads)
    study["setup"]["wall_seconds"] = time.perf_counter() - t0
    return study


def assemble(ctx: StudyContext, row_tables: dict, cells: list, results: dict, *, notes: list[str]) -> dict[str, Any]:
    """Everything results.json holds but the set-up: teachers, per-row figures and comparisons,
    the headline, per-class gains, and every cell's result (by key; ``results_of`` lists each
    row's keys, so that rows sharing a configuration share its cells)."""
    analysis = an.analyse(row_tables, cells, results)
    results_of: dict[str, list[dict]] = {}
    for c in cells:
        if c.key in results:
            results_of.setdefault(c.row.name, []).append(results[c.key])
    seeds = sorted({c.seed for c in cells})
    return {
        "config": ctx.config.model_dump(mode="json"), "teachers": ctx.teachers, "student_pretrained": ctx.student,
        "notes": notes, "analysis": analysis, "headline": an.headline(analysis, ctx.teachers, seeds),
        "per_class_gain": an.per_class_gains(results_of.get(an.CE_ROW, []), results_of.get(an.DTKD_ROW, []),
                                             class_names(ctx.manifest)),
        "cells": {c.key: results.get(c.key) for c in cells},
        "results_of": {name: [r["key"] for r in rs] for name, rs in results_of.items()},
    }


def _study_rows(row_tables: dict) -> list:
    """Each distinct row once (by name), in table order; CE always (it is every row's reference)."""
    rows: dict[str, Any] = {}
    for trows in row_tables.values():
        for row in trows:
            rows.setdefault(row.name, row)
    rows.setdefault(CE.name, CE_REFERENCE)
    return list(rows.values())


def _setup(config: DTKDConfig, manifest, *, seeds, jobs, threads, epochs, counts, quick, tables, latency_repeats) -> dict:
    def n_epochs(train) -> int:
        return with_epochs(train, epochs, None).epochs

    return {
        "command": " ".join(shlex.quote(a) for a in ["python", "bench/reproduce.py", *sys.argv[1:]]),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
        "cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__, "jobs": jobs, "threads": threads,
        "seeds": seeds, "quick": quick, "tables": tables, "cells": counts, "latency_repeats": latency_repeats,
        "epochs": {"pretrain": {r: n_epochs(config.pretrain_train_config(r)) for r in config.pretraining.roles},
                   "teacher": {r: n_epochs(config.teacher_train_config(r)) for r in ("vit", "cnn")},
                   "distill": n_epochs(config.distill_train_config())},
        "num_classes": num_classes_of(manifest),
        "splits": {k: int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "config": "<in memory>",
    }


def git_commit() -> str:
    """HEAD's short hash, marked when the tree has uncommitted changes (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


# ----------------------------------------------------------------------------- output
def make_plots(study: dict, out_dir: Path) -> dict[str, str]:
    """Every figure under ``out_dir/results``; {what: path relative to out_dir}."""
    fig_dir = out_dir / "results"
    rows, cells = study["analysis"]["rows"], study["cells"]
    results_of = {name: [cells[k] for k in keys] for name, keys in study["results_of"].items()}
    made: dict[str, Optional[Path]] = {}
    for table, lines in study["analysis"]["tables"].items():
        if table != "8":  # a cost table: its accuracies are those of the CE and DT-KD rows
            made[table] = plots.accuracy(table, TITLES[table], lines, rows, fig_dir)
    made["curves"] = plots.curves(results_of, fig_dir)
    made["datw"] = plots.datw_weights(results_of.get(an.DTKD_ROW, []), ["vit", "cnn"], fig_dir)
    made["per_class"] = plots.per_class_gain(study["per_class_gain"], fig_dir)
    return {k: str(p.relative_to(out_dir)) for k, p in made.items() if p is not None}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    p.add_argument("--quick", action="store_true", help=f"rows none, kd-vit, kd-cnn, dtkd; {QUICK_SEEDS} seeds "
                   "unless --seeds; --tables is ignored (no Table 7 teachers, no Table 8)")
    p.add_argument("--tables", nargs="+", choices=TABLES + EXTRA_TABLES, default=list(TABLES),
                   help="tables of the full study (default: all but 'tune', the selection grid on validation)")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds 0..N-1 per row (default {FULL_SEEDS}; --quick {QUICK_SEEDS})")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for teachers and cells")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (recorded: results depend on it)")
    p.add_argument("--epochs", type=int, default=None, help="override every stage's epochs (pretraining, teachers, "
                   "students): for tests and smoke runs")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".dtkd" / "study", help="teachers, cells and the data")
    p.add_argument("--out-dir", type=Path, default=REPO / "docs", help="results.md, results.json, results/*.png")
    p.add_argument("--extra-vit", default=EXTRA_TEACHERS["vit"], help="Table 7's second ViT (registry name)")
    p.add_argument("--extra-cnn", default=EXTRA_TEACHERS["cnn"], help="Table 7's second CNN (registry name)")
    p.add_argument("--transfer", action="store_true", help="--quick: also the few-label rows (16 labels per class): "
                   "CE, DT-KD, and DT-KD on the other train clips as an unlabelled transfer set (distill.transfer_set); "
                   "the full study has them as its table 'transfer'")
    p.add_argument("--pretrained", choices=["study", "registry"], default="study",
                   help="study: pretrain the models of pretraining.roles here, on the corpus (no registry "
                        "needed); registry: fine-tune from the weights `make pretrain` registered")
    p.add_argument("--rows", nargs="+", default=None, help="only these rows of the tables asked for (and CE), "
                   "e.g. more seeds for one row of a selection grid: --tables tune --rows 'dtkd tau=2 beta=1 gamma=1'")
    p.add_argument("--latency-repeats", type=int, default=20, help="Table 8: forwards whose median is the latency")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else FULL_SEEDS
    if args.seeds < 1 or args.jobs < 1 or args.threads < 1:
        p.error("--seeds, --jobs and --threads must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a job scheduler, `timeout`) unwinds like Ctrl-C: the worker pool is terminated and
    # every finished cell is already on disk; the next run resumes from there.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    study = run_study(load_config(args.config), tables=args.tables, quick=args.quick, seeds=args.seeds, jobs=args.jobs,
                      threads=args.threads, cache_dir=args.cache_dir, epochs=args.epochs,
                      extra={"vit": args.extra_vit, "cnn": args.extra_cnn}, transfer=args.transfer, pretrained=args.pretrained,
                      latency_repeats=args.latency_repeats, rows=args.rows)
    study["setup"]["config"] = str(args.config)
    study["plots"] = make_plots(study, args.out_dir)
    md, js = write(study, args.out_dir)
    for note in study["notes"]:
        log(note)
    counts = study["setup"]["cells"]
    print(f"wrote {md} and {js}; cells computed {counts['computed']}, cached {counts['cached']}, failed "
          f"{counts['failed']}; wall time {study['setup']['wall_seconds']:.0f} s")
    print(json.dumps(study["headline"]))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
