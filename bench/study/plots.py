"""The report's figures (PNG, matplotlib's Agg backend: no display needed). Each function returns
the file it wrote, or None when the study has no data for it (e.g. no DT-KD row)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.study.analysis import CE_ROW, DTKD_ROW  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy(table: str, title: str, lines: list[dict], rows: Mapping[str, dict], out: Path) -> Optional[Path]:
    """Mean test top-1 per row with its 95% bootstrap interval, and each seed as a dot."""
    names = [ln["row"] for ln in lines if rows[ln["row"]]["test"]]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    for y, name in enumerate(names):
        fig_row = rows[name]
        summ, vals = fig_row["test_summary"], list(fig_row["test"].values())
        ax.scatter([100 * v for v in vals], [y] * len(vals), s=12, color="0.6", zorder=2)
        lo, hi = summ["ci"] or (summ["mean"], summ["mean"])
        ax.errorbar(100 * summ["mean"], y, xerr=[[100 * (summ["mean"] - lo)], [100 * (hi - summ["mean"])]],
                    fmt="o", color="C0" if name != DTKD_ROW else "C3", capsize=3, zorder=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("test top-1 (%): mean, 95% bootstrap interval over seeds; dots: seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / f"accuracy_table{table}.png")


def _per_epoch(results: list[dict], source: str, key: str) -> Optional[np.ndarray]:
    """(seeds, epochs) array of ``key`` from each cell's ``history`` or ``diagnostics``."""
    series = [[rec.get(key) for rec in r.get(source, [])] for r in results]
    series = [s for s in series if s and all(v is not None for v in s)]
    if not series:
        return None
    n = min(len(s) for s in series)
    return np.array([s[:n] for s in series], dtype=float)


def _band(ax, arr: np.ndarray, label: str, color: str) -> None:
    epochs = np.arange(1, arr.shape[1] + 1)
    mean, std = arr.mean(0), arr.std(0)
    ax.plot(epochs, mean, "o-", ms=3, color=color, label=f"{label} ({arr.shape[0]} seeds)")
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)


def curves(results_of: Mapping[str, list[dict]], out: Path) -> Optional[Path]:
    """Validation top-1 per epoch of CE and DT-KD (mean over seeds, band = +-1 std)."""
    arrays = {name: _per_epoch(results_of.get(name, []), "history", "val_top1") for name in (CE_ROW, DTKD_ROW)}
    if all(a is None for a in arrays.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, arr), color in zip(arrays.items(), ("C0", "C3")):
        if arr is not None:
            _band(ax, 100 * arr, "CE" if name == CE_ROW else "DT-KD", color)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out / "curves_ce_vs_dtkd.png")


def datw_weights(results: list[dict], roles: list[str], out: Path) -> Optional[Path]:
    """Mean DATW weight of each teacher per epoch of the DT-KD row (mean over seeds)."""
    arrays = {role: _per_epoch(results, "diagnostics", f"datw/weight_mean/{role}") for role in roles}
    if all(a is None for a in arrays.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for (role, arr), color in zip(arrays.items(), ("C1", "C2", "C4", "C5")):
        if arr is not None:
            _band(ax, arr, f"{role} teacher", color)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean DATW weight")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out / "datw_weights.png")


def per_class_gain(gains: Mapping[str, Any], out: Path) -> Optional[Path]:
    """Per-class test accuracy of DT-KD minus CE (mean over paired seeds), one bar per class."""
    if not gains.get("classes"):
        return None
    names, mean = gains["classes"], 100 * np.array(gains["mean"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 1), 4))
    ax.bar(range(len(names)), mean, color=["C2" if g >= 0 else "C3" for g in mean])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel(f"test accuracy gain, DT-KD - CE (points; {gains['seeds']} seeds)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "per_class_gain.png")
