"""results.md and results.json of the study: every figure with how it was obtained (command,
machine, threads, date, commit, wall time), so that a reader can tell a gain from noise and rerun
the exact study."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from bench.study.tables import TITLES

HOW_TO_READ = """\
**How to read.** Every row is one configuration of the student's training, run once per seed
(seeds 0..n-1: the student's initial weights, the data order and augmentation change; the
teachers are trained once and shared by every row, as in the paper). Accuracies are top-1 in %,
mean ± sample std over seeds, on the test split; the validation column is what choices are made
on. **Δ** columns are paired: the row's test top-1 minus the reference's, seed by seed, averaged,
with a 95% bootstrap interval over seeds (10,000 resamples of the seeds, fixed RNG). "within
noise" means that interval contains 0: at this number of seeds the data cannot tell the two rows
apart. The **best baseline** is the single-teacher method (KD from either teacher, DKD, AT, MGD,
RKD, OFA-KD, CAKD) with the highest mean *validation* top-1; the test figures never choose it. With few seeds
the intervals are wide and the percentile bootstrap is optimistic (it cannot see more spread than
the seeds show)."""


def _pct(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _mean_std(summ: Mapping[str, Any]) -> str:
    if summ["mean"] is None:
        return "—"
    return _pct(summ["mean"]) + ("" if summ["std"] is None else f" ± {_pct(summ['std'])}")


def delta(cmp: Optional[Mapping[str, Any]]) -> str:
    """'+3.1 [+0.5, +5.2]' (points), with 'within noise' when the interval contains 0."""
    if cmp is None or cmp["mean"] is None:
        return "—"
    text = f"{100 * cmp['mean']:+.1f}"
    if cmp["ci"] is None:
        return text + " (1 seed: no interval)"
    lo, hi = cmp["ci"]
    return text + f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" + (" within noise" if cmp["within_noise"] else "")


def _shipped_note(pretrained: Mapping) -> str:
    """Where a shipped backbone came from (dtkd_ops.shipped): it was trained elsewhere, not here."""
    source = pretrained.get("source") or ""
    return f" (the repository's `{source.split(':', 1)[1]}`)" if source.startswith("shipped:") else ""


def teachers_md(teachers: Mapping[str, dict]) -> list[str]:
    lines = ["| Teacher | Role | Model | Pretraining corpus test top-1 % | Train top-1 % | Val top-1 % | Test top-1 % | Note |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for tid, t in teachers.items():
        given = (t.get("pretrained") or {}).get("from")
        pre = (f"given weights `{Path(given).name}`" if given else
               _pct(t["pretrained"]["corpus_test_top1"]) + _shipped_note(t["pretrained"]) if t.get("pretrained")
               else "not pretrained")
        train = _pct(t["train_top1"]) if t.get("train_top1") is not None else "—"
        lines.append(f"| {tid} | {t['role']} | {t['model']} | {pre} | {train} | {_pct(t['val_top1'])} | {_pct(t['test_top1'])} "
                     f"| {t.get('note') or ''} |")
    return lines


def table_md(table: str, lines: list[dict], rows: Mapping[str, dict], best: Optional[str]) -> list[str]:
    out = [f"## {TITLES[table]}", "",
           f"| Row | Seeds | Val top-1 % | Test top-1 % | Δ vs CE | Δ vs best baseline ({best or '—'}) |",
           "|---|---:|---:|---:|---|---|"]
    for ln in lines:
        fig = rows[ln["row"]]
        failed = f" ({len(fig['failed'])} failed)" if fig["failed"] else ""
        name = f"**{ln['row']}**" if ln["row"] == best else ln["row"]
        out.append(f"| {name} | {fig['test_summary']['n']}{failed} | {_mean_std(fig['val_summary'])} | "
                   f"{_mean_std(fig['test_summary'])} | {delta(ln['vs_ce'])} | {delta(ln['vs_best'])} |")
    return out


def table8_md(t8: Mapping[str, Any], repeats: int) -> list[str]:
    out = [f"## {TITLES['8']}", "",
           f"| Model | Network | Input (C,T,H,W) | Params (M) | GFLOPs | CPU latency ms (batch 1, median of {repeats}) | "
           "Val top-1 % | Test top-1 % |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for m in t8["models"]:
        gf = f"{m['gflops']:.3f}" if m.get("gflops") is not None else "—"
        out.append(f"| {m['id']} | {m['model']} | {tuple(m['input'])} | {m['params'] / 1e6:.2f} | {gf} | "
                   f"{m['latency_ms']:.1f} | {_pct(m.get('val_top1'))} | {_pct(m.get('test_top1'))} |")
    c = t8["claim"]
    if c["holds"] is None:
        out += ["", f"Claim not checked: {c['why']}."]
    else:
        share = "—" if c["flops_share"] is None else f"{100 * c['flops_share']:.1f}%"
        out += ["", f"Does the DT-KD student reach its ViT teacher's test top-1 at <= 10% of its FLOPs? "
                f"**{'yes' if c['holds'] else 'no'}**: student {_pct(c['student_top1'])}% vs ViT {_pct(c['vit_top1'])}%, "
                f"at {share} of the ViT's GFLOPs."]
    return out


def markdown(study: Mapping[str, Any]) -> str:
    s, a = study["setup"], study["analysis"]
    lines = ["# Reproduction study: results", "",
             f"- Command: `{s['command']}`",
             f"- Machine: {s['cpu']} ({s['cpus']} CPUs); {s['jobs']} worker process(es) x {s['threads']} torch thread(s); "
             f"torch {s['torch']}",
             f"- Date: {s['started']}; commit {s['commit']}; wall time {s['wall_seconds'] / 60:.1f} min "
             f"(cells computed {s['cells']['computed']}, from cache {s['cells']['cached']}, failed {s['cells']['failed']})",
             f"- Config: `{s['config']}`; seeds {s['seeds']}; epochs: {s['epochs']}; {s['num_classes']} classes, "
             f"splits {s['splits']}",
             "", HOW_TO_READ, "", "## Teachers (trained once for the whole study)", "", *teachers_md(study["teachers"])]
    if study.get("student_pretrained"):
        lines += ["", f"Student pretrained once on the corpus (corpus test top-1 "
                  f"{_pct(study['student_pretrained']['corpus_test_top1'])}%"
                  f"{_shipped_note(study['student_pretrained']).replace(' (', ', ').rstrip(')')}); every cell "
                  "fine-tunes from it."]
    for table, tlines in a["tables"].items():
        if table == "8":  # its rows (CE, DT-KD) only feed the cost table's accuracies
            lines += ["", *table8_md(study["table8"], s["latency_repeats"])]
            continue
        lines += ["", *table_md(table, tlines, a["rows"], a["best_baseline"])]
        if table in study["plots"]:
            lines += ["", f"![{TITLES[table]}]({study['plots'][table]})"]
    for key, title in (("curves", "Validation top-1 per epoch, CE vs DT-KD"), ("datw", "DATW weight per teacher over training"),
                       ("per_class", "Per-class test gain of DT-KD over CE")):
        if key in study["plots"]:
            lines += ["", f"## {title}", "", f"![{title}]({study['plots'][key]})"]
    if study.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in study["notes"]]]
    return "\n".join(lines) + "\n"


def write(study: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """results.md and results.json under ``out_dir`` (per-seed values keyed by seed as text)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "results.md", out_dir / "results.json"
    md.write_text(markdown(study))
    js.write_text(json.dumps(study, indent=1, default=str, sort_keys=False))
    return md, js
