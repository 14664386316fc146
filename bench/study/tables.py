"""Which rows each table of the paper has, built on the config's distill section (each row
changes only what its table varies). Several tables share configurations (Table 6's "SDB none"
is Table 5's DATW row with L_SD off; Table 7's original pair is the ``dtkd`` row): such rows are
the same cells, computed once, because cells are keyed by content, not by name."""
from __future__ import annotations

from dataclasses import replace

from bench.methods import ablation_variants
from bench.study.cells import Row
from dtkd.distill import DISTILLERS, DistillConfig

TABLES = ("1", "5", "6", "7", "8", "terms", "transfer")  # the full study's default
EXTRA_TABLES = ("tune", "tune-baselines")  # only when named: selection grids, read on validation
TITLES = {
    "quick": "Quick study: CE, single-teacher baselines and DT-KD",
    "1": "Table 1: DT-KD against CE and the single-teacher baselines",
    "5": "Table 5: teacher weighting of L_SR (L_SD off)",
    "6": "Table 6: structure discrepancy branch (SDB)",
    "7": "Table 7: other teacher pairs",
    "8": "Table 8: cost and accuracy of every model",
    "terms": "Which term: DT-KD with one loss term off at a time",
    "transfer": "Transfer: few labels, with and without the unlabelled transfer set",
    "tune": "Selection on validation: temperature and the weights of L_SD and L_RKD",
    "tune-baselines": "Selection on validation: the weight of each other baseline's distillation term",
}
# single-teacher rows the best baseline is chosen from (OFA-KD and CAKD: the cross-architecture ones)
BASELINES = ("kd-vit", "kd-cnn", "dkd", "at", "mgd", "rkd", "ofa", "cakd")  # not pixelkd: its student sees less
QUICK_ROWS = ("none", "kd-vit", "kd-cnn", "dtkd")  # CE, both single-teacher KDs (the best, on val), DT-KD
FEW_LABELS = 16
CE = Row("none", {"method": "none"})  # every row's reference: the study always runs it
# Each baseline at its own best setting on validation, not at DT-KD's or its paper's: the
# `tune` (KD's tau) and `tune-baselines` grids with the study's teachers, seeds 0-1, the highest
# mean validation top-1 (a tie keeps the value run before; docs/tune/results.md, docs/runs.md).
KD_TAU = 1.0
BASELINE_SETTINGS = {
    "dkd": {"dkd_beta": 1.0},                                  # paper 8: val 72.9 -> 80.2
    "mgd": {"mgd_weight": 7e-4},                               # paper 7e-5: 78.6 -> 82.8
    "rkd": {"gamma": 0.01},                                    # DT-KD's 0.1: 80.2 -> 81.2
    "ofa": {"ofa_weight": 10.0, "ofa_final_weight": 10.0},     # paper 1: 83.3 -> 83.9
    "cakd": {"cakd_pca_weight": 0.1, "cakd_gl_weight": 0.1},   # 1: 66.1 -> 82.3
    "pixelkd": {"pixelkd_isrd_weight": 1.0},                   # paper 10: 58.3 -> 70.8
}


# Every row but DT-KD's runs on the distill section the baselines were tuned and run with: tau 4
# (the temperature of DKD and PixelKD's logit term; KD rows set their own), beta = gamma = 0.1
# (DT-KD's L_SD and L_RKD weights, which change no other method's number; RKD sets its own gamma).
# DT-KD's own defaults (configs/default.yaml) can then move without moving a baseline: their
# cells stay the same cells (a cell's key holds its whole distill section).
BASELINE_BASE = {"tau": 4.0, "beta": 0.1, "gamma": 0.1}


def _on_baseline_base(row: Row) -> Row:
    if row.update.get("method") == "dtkd":
        return row
    return replace(row, update={**BASELINE_BASE, **row.update})


# Every row's reference as every table runs it: a study of tables without CE (--tables 5) adds
# this row, the same cells as Table 1's CE.
CE_REFERENCE = _on_baseline_base(CE)


def _student_scale(base: DistillConfig, method: str) -> float | None:
    """PixelKD's student sees a smaller crop than its teacher (the method's premise); every other row
    keeps the student's view."""
    return base.pixelkd_scale if method == "pixelkd" else None


def table1(base: DistillConfig) -> list[Row]:
    """CE, KD from each teacher alone, the other single-teacher baselines (they learn from
    ``baseline_teacher``, the config's), DT-KD, then any other registered method."""
    rows = [CE,
            Row("kd-vit", {"method": "kd", "baseline_teacher": "vit", "tau": KD_TAU}),
            Row("kd-cnn", {"method": "kd", "baseline_teacher": "cnn", "tau": KD_TAU})]
    named = ("dkd", "at", "mgd", "rkd", "ofa", "cakd", "pixelkd", "dtkd")
    rows += [Row(m, {"method": m, **BASELINE_SETTINGS.get(m, {})}, student_scale=_student_scale(base, m))
             for m in named]
    rows += [Row(m, {"method": m}) for m in DISTILLERS.names() if m not in {"none", "kd", *named}]
    return rows


def table5(base: DistillConfig) -> list[Row]:
    return [Row(name, update) for name, update in ablation_variants(base) if "weighting" in update]


def table6(base: DistillConfig) -> list[Row]:
    """No SDB (L_SD off: the branch exists only to predict the residual), SE, NL, NL+SE; the base
    config's SDB is the ``dtkd`` row."""
    variants = {update["sdb"]: Row(name, update) for name, update in ablation_variants(base) if "sdb" in update}
    variants[base.sdb] = Row(f"dtkd sdb={base.sdb}", {"method": "dtkd"})
    return [Row("dtkd sdb=none (L_SD off)", {"method": "dtkd", "use_sd": False})] + \
        [variants[s] for s in ("se", "nl", "nl+se") if s in variants]


def terms(base: DistillConfig) -> list[Row]:
    """DT-KD with each of its three terms off in turn (L_SD off is Table 6's "none" row, the same
    cells), then L_SR alone (both teachers' logits, DATW-weighted, no feature term): which term
    is responsible for a gain, or a loss."""
    return [Row("dtkd", {"method": "dtkd"}), Row("dtkd use_sr=off", {"method": "dtkd", "use_sr": False}),
            Row("dtkd sdb=none (L_SD off)", {"method": "dtkd", "use_sd": False}),
            Row("dtkd use_rkd=off", {"method": "dtkd", "use_rkd": False}),
            Row("dtkd L_SR only", {"method": "dtkd", "use_sd": False, "use_rkd": False})]


TUNE_TAUS = (1.0, 2.0, 4.0)
TUNE_WEIGHTS = ((1.0, 1.0), (0.1, 0.1))  # (beta, gamma)


def tune(base: DistillConfig) -> list[Row]:
    """The grid the defaults are chosen from, on validation only: tau (shared by L_SR, KD and DKD,
    so the KD baselines, from either teacher, get the same grid) x the weights of L_SD and L_RKD
    (beta, gamma). Rows at the config's own values are the same cells as Table 1's, by content."""
    rows = [CE]
    for tau in TUNE_TAUS:
        for teacher in ("vit", "cnn"):
            rows.append(Row(f"kd-{teacher} tau={tau:g}", {"method": "kd", "baseline_teacher": teacher, "tau": tau}))
        for beta, gamma in TUNE_WEIGHTS:
            rows.append(Row(f"dtkd tau={tau:g} beta={beta:g} gamma={gamma:g}",
                            {"method": "dtkd", "tau": tau, "beta": beta, "gamma": gamma}))
    return rows


# Each other baseline's own knob, the same 3-point grid per method: the paper's value and a tenth
# and ten times it (DKD: its beta, the weight of the non-target-class term, at 1, 2 and its
# paper's 8; CAKD and PixelKD, far below CE at their papers' values, a tenth and a hundredth).
def _scaled(base: DistillConfig, fields: tuple[str, ...], factors: tuple[float, ...]) -> list[dict]:
    return [{k: float(f"{getattr(base, k) * f:.6g}") for k in fields} for f in factors]


BASELINE_GRID = {
    "dkd": lambda b: [{"dkd_beta": v} for v in (8.0, 2.0, 1.0)],
    "at": lambda b: _scaled(b, ("at_weight",), (1.0, 0.1, 10.0)),
    "mgd": lambda b: _scaled(b, ("mgd_weight",), (1.0, 0.1, 10.0)),
    "rkd": lambda b: _scaled(b, ("gamma",), (1.0, 0.1, 10.0)),
    "ofa": lambda b: _scaled(b, ("ofa_weight", "ofa_final_weight"), (1.0, 0.1, 10.0)),
    "cakd": lambda b: _scaled(b, ("cakd_pca_weight", "cakd_gl_weight"), (1.0, 0.1, 0.01)),
    "pixelkd": lambda b: _scaled(b, ("pixelkd_isrd_weight",), (1.0, 0.1, 0.01)),
}


def tune_baselines(base: DistillConfig) -> list[Row]:
    """Every other single-teacher baseline over its grid (``BASELINE_GRID``), on validation only,
    so each is compared at its own best setting, as KD (``tune``) and DT-KD are; the row at the
    chosen setting (``BASELINE_SETTINGS``) is the same cell as Table 1's."""
    rows = [CE]
    on_baseline_base = base.model_copy(update=BASELINE_BASE)  # RKD's grid is around that gamma, not DT-KD's
    for method, grid in BASELINE_GRID.items():
        for update in grid(on_baseline_base):
            label = " ".join(f"{k}={v:g}" for k, v in update.items())
            rows.append(Row(f"{method} {label}", {"method": method, **update},
                            student_scale=_student_scale(base, method)))
    return rows


def table7(base: DistillConfig, teacher_ids: list[str]) -> list[Row]:
    """DT-KD with every (ViT, CNN) pair of the study's teachers."""
    vits = [t for t in teacher_ids if t.startswith("vit")]
    cnns = [t for t in teacher_ids if t.startswith("cnn")]
    return [Row(f"dtkd {v}+{c}", {"method": "dtkd"}, teachers=(("vit", v), ("cnn", c))) for v in vits for c in cnns]


def transfer_rows(base: DistillConfig) -> tuple[list[Row], str]:
    """Few labels (``FEW_LABELS`` per class; the other train clips become the unlabelled transfer
    set): CE, DT-KD on the labelled clips, DT-KD on the labelled clips + the transfer set."""
    rows = [Row(f"none {FEW_LABELS} labels/class", {"method": "none"}, labels_per_class=FEW_LABELS),
            Row(f"dtkd {FEW_LABELS} labels/class", {"method": "dtkd", "transfer_set": False}, labels_per_class=FEW_LABELS),
            Row(f"dtkd {FEW_LABELS} labels/class + transfer", {"method": "dtkd", "transfer_set": True},
                labels_per_class=FEW_LABELS)]
    return rows, (f"transfer rows: {FEW_LABELS} labelled train clips per class, the other train clips unlabelled "
                  "(distill.transfer_set); the study's teachers are the shared ones, fine-tuned on every train "
                  "label, so the transfer row's gain includes labels the student never saw, through the teachers")


def study_tables(base: DistillConfig, tables: list[str], *, quick: bool, teacher_ids: list[str],
                 transfer: bool) -> tuple[dict[str, list[Row]], list[str]]:
    """({table: rows}, notes). Table 8 measures models; its accuracies come from the CE and DT-KD
    rows, which it adds."""
    notes: list[str] = []
    if quick:
        by_name = {r.name: r for r in table1(base)}
        out = {"quick": [by_name[n] for n in QUICK_ROWS]}
    else:
        builders = {"1": lambda: table1(base), "5": lambda: table5(base), "6": lambda: table6(base),
                    "7": lambda: table7(base, teacher_ids), "8": lambda: [r for r in table1(base) if r.name in ("none", "dtkd")],
                    "terms": lambda: terms(base), "tune": lambda: tune(base),
                    "tune-baselines": lambda: tune_baselines(base)}
        out = {t: builders[t]() for t in tables if t != "transfer"}
    if transfer or (not quick and "transfer" in tables):
        rows, note = transfer_rows(base)
        notes.append(note)
        if rows:
            out["transfer"] = rows
    return {t: [_on_baseline_base(r) for r in rows] for t, rows in out.items()}, notes
