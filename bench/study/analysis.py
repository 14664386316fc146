"""From cell results to the study's figures: per row, the per-seed validation and test top-1 and
their summaries; per table row, paired comparisons with CE and with the best single-teacher
baseline. The best baseline is chosen on VALIDATION (mean val top-1), never on test: choosing on
the figure one then reports would inflate it."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from bench.study.cells import Cell, Row
from bench.study.stats import compare, summarize
from bench.study.tables import BASELINES

CE_ROW = "none"
DTKD_ROW = "dtkd"


def row_figures(cells: list[Cell], results: Mapping[str, dict]) -> dict[str, Any]:
    """{seed: value} of val and test top-1 over a row's cells, their summaries, failed seeds."""
    val, test, failed = {}, {}, []
    for cell in sorted(cells, key=lambda c: c.seed):
        res = results.get(cell.key)
        if res is None or res.get("error"):
            failed.append(cell.seed)
            continue
        val[cell.seed], test[cell.seed] = res["val_top1"], res["test_top1"]
    return {"keys": {c.seed: c.key for c in cells}, "val": val, "test": test, "failed": failed,
            "val_summary": summarize(val), "test_summary": summarize(test)}


def best_baseline(rows: Mapping[str, dict]) -> Optional[str]:
    """The single-teacher row with the highest mean validation top-1 (ties: the first listed)."""
    best, score = None, None
    for name in BASELINES:
        mean = rows.get(name, {}).get("val_summary", {}).get("mean")
        if mean is not None and (score is None or mean > score):
            best, score = name, mean
    return best


def analyse(tables: Mapping[str, list[Row]], cells: list[Cell], results: Mapping[str, dict]) -> dict[str, Any]:
    """{"rows": {name: figures}, "best_baseline": name, "tables": {table: [row comparison]}}.
    Comparisons are on test top-1, paired by seed."""
    by_row: dict[str, list[Cell]] = {}
    for cell in cells:
        by_row.setdefault(cell.row.name, []).append(cell)
    rows = {name: row_figures(cs, results) for name, cs in by_row.items()}
    best = best_baseline(rows)
    out_tables = {}
    for table, trows in tables.items():
        lines = []
        for row in trows:
            fig = rows[row.name]
            line = {"row": row.name, "vs_ce": None, "vs_best": None}
            if CE_ROW in rows and row.name != CE_ROW:
                line["vs_ce"] = compare(fig["test"], rows[CE_ROW]["test"])
            if best is not None and row.name != best:
                line["vs_best"] = compare(fig["test"], rows[best]["test"])
            lines.append(line)
        out_tables[table] = lines
    return {"rows": rows, "best_baseline": best, "tables": out_tables}


def headline(analysis: Mapping[str, Any], teachers: Mapping[str, dict], seeds: list[int]) -> dict[str, Any]:
    """The last stdout line: CE, DT-KD and the best baseline (mean test top-1, fractions), the
    intervals of DT-KD's paired gain over each, the teachers' test top-1 and the seeds."""
    rows, best = analysis["rows"], analysis["best_baseline"]

    def mean(name: Optional[str]) -> Optional[float]:
        return rows[name]["test_summary"]["mean"] if name in rows else None

    def ci(ref: Optional[str]) -> Optional[list[float]]:
        if DTKD_ROW not in rows or ref not in rows:
            return None
        return compare(rows[DTKD_ROW]["test"], rows[ref]["test"])["ci"]

    return {"ce": mean(CE_ROW), "dtkd": mean(DTKD_ROW), "best_baseline": mean(best), "best_baseline_name": best,
            "delta_ce_ci": ci(CE_ROW), "delta_best_ci": ci(best),
            "teachers": {tid: t["test_top1"] for tid, t in teachers.items() if tid in ("vit", "cnn")},
            "seeds": list(seeds)}


def per_class_gains(ce: list[dict], dtkd: list[dict], classes: list[str]) -> dict[str, Any]:
    """Per-class test accuracy of DT-KD minus CE, paired by seed, averaged over the seeds both rows
    have (a class absent from test, NaN/None, is left out of its mean)."""
    ce_by, dt_by = {r["seed"]: r for r in ce if not r.get("error")}, {r["seed"]: r for r in dtkd if not r.get("error")}
    seeds = sorted(set(ce_by) & set(dt_by))
    if not seeds:
        return {"classes": [], "mean": [], "seeds": 0}
    means = []
    for k in range(len(classes)):
        diffs = [dt_by[s]["test_per_class"][k] - ce_by[s]["test_per_class"][k] for s in seeds
                 if dt_by[s]["test_per_class"][k] is not None and ce_by[s]["test_per_class"][k] is not None]
        means.append(sum(diffs) / len(diffs) if diffs else None)
    return {"classes": list(classes), "mean": means, "seeds": len(seeds)}
