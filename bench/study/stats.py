"""Statistics over seeds: the study runs every row on the same seeds, so rows are compared seed by
seed (paired), and the interval comes from resampling seeds, the only source of variation the
study controls."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same numbers give the same interval on every run and machine


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof=1; None with fewer than two values)."""
    vals = [float(v) for v in values]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def bootstrap_mean_ci(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                      seed: int = BOOTSTRAP_SEED) -> Optional[tuple[float, float]]:
    """Percentile bootstrap interval of the mean: the seeds are resampled with replacement.
    None with fewer than two values (one seed says nothing about the spread). A fresh RNG per
    call: an interval does not depend on which intervals were computed before it."""
    vals = np.asarray(values, dtype=np.float64)
    if vals.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, vals.size, size=(resamples, vals.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_differences(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
    """a[s] - b[s] for every seed both have (a cell that failed leaves its seed out of the pair)."""
    return {s: float(a[s]) - float(b[s]) for s in sorted(set(a) & set(b))}


def compare(a: Mapping[int, float], b: Mapping[int, float], **bootstrap) -> dict:
    """Paired comparison of two rows given as {seed: value}: mean difference, its bootstrap
    interval, and ``within_noise`` when that interval contains 0 (None without an interval)."""
    diffs = paired_differences(a, b)
    mean, std = mean_std(list(diffs.values()))
    ci = bootstrap_mean_ci(list(diffs.values()), **bootstrap)
    within = None if ci is None else bool(ci[0] <= 0.0 <= ci[1])
    return {"seeds": list(diffs), "diffs": list(diffs.values()), "mean": mean, "std": std,
            "ci": None if ci is None else list(ci), "within_noise": within}


def summarize(per_seed: Mapping[int, float]) -> dict:
    """One row's figure over seeds: values, mean, std and the bootstrap interval of the mean."""
    vals = [per_seed[s] for s in sorted(per_seed)]
    mean, std = mean_std(vals)
    ci = bootstrap_mean_ci(vals)
    return {"n": len(vals), "mean": mean, "std": std, "ci": None if ci is None else list(ci)}
