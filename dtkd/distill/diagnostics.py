"""Per-epoch statistics of DATW (weights, confidences, discrepancies) for logging.

They answer "which teacher does the student follow?": the mean weight per teacher, the
share of samples on which each teacher has the largest weight, histograms, and how often
the uniform fallback fired. Accumulated on the device (no host sync per step); read and
reset once per epoch by ``Distiller.epoch_diagnostics()``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

# Value ranges of the three quantities; histograms use fixed bins so epochs are comparable.
_RANGES = {"weight": (0.0, 1.0), "confidence": (0.0, 1.0), "discrepancy": (0.0, 2.0)}


class DATWStats:
    """Running sums and histograms of DATW terms over the samples seen since the last reset."""

    def __init__(self, teacher_names: Sequence[str], bins: int = 10) -> None:
        self.names = list(teacher_names)
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._fallback: Tensor | None = None
        self._preferred: Tensor | None = None
        self._sums: dict[str, Tensor] = {}
        self._hists: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self, weights: Tensor, confidence: Tensor, discrepancy: Tensor, fallback: Tensor) -> None:
        k = len(self.names)
        if weights.shape[-1] != k:
            raise ValueError(f"DATWStats expected {k} teachers, got weights {tuple(weights.shape)}")
        values = {"weight": weights, "confidence": confidence, "discrepancy": discrepancy}
        for key, v in values.items():
            v = v.detach().float()
            self._sums[key] = self._sums.get(key, 0) + v.sum(0)
            self._hists[key] = self._hists.get(key, 0) + self._histogram(v, *_RANGES[key])
        preferred = torch.bincount(weights.detach().argmax(1), minlength=k).float()
        self._preferred = preferred if self._preferred is None else self._preferred + preferred
        fb = fallback.detach().float().sum()
        self._fallback = fb if self._fallback is None else self._fallback + fb
        self.n += weights.shape[0]

    def _histogram(self, v: Tensor, lo: float, hi: float) -> Tensor:
        """(K, bins) counts of a (B, K) tensor; one-hot sums rather than torch.histc, which
        raises on CUDA under torch.use_deterministic_algorithms(True)."""
        idx = ((v - lo) / (hi - lo) * self.bins).floor().clamp(0, self.bins - 1).long()
        return torch.nn.functional.one_hot(idx, self.bins).sum(0).float()

    def summary(self) -> dict[str, Any]:
        """{"scalars": {name: float}, "histograms": {name: {"edges", "counts"}}}; empty if no data."""
        if self.n == 0:
            return {"scalars": {}, "histograms": {}}
        scalars: dict[str, float] = {
            "datw/n_samples": float(self.n),
            "datw/fallback_rate": float(self._fallback) / self.n,
        }
        histograms: dict[str, dict[str, list[float]]] = {}
        preferred = (self._preferred / self.n).tolist()
        for key, (lo, hi) in _RANGES.items():
            means = (self._sums[key] / self.n).tolist()
            counts = self._hists[key].tolist()
            edges = torch.linspace(lo, hi, self.bins + 1).tolist()
            for j, name in enumerate(self.names):
                scalars[f"datw/{key}_mean/{name}"] = means[j]
                histograms[f"datw/{key}/{name}"] = {"edges": edges, "counts": counts[j]}
        for j, name in enumerate(self.names):
            scalars[f"datw/preferred/{name}"] = preferred[j]
        return {"scalars": scalars, "histograms": histograms}


class MeanMeter:
    """Device-side running mean of a scalar tensor (e.g. the kept fraction of the SD mask)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum: Tensor | None = None
        self.n = 0

    @torch.no_grad()
    def update(self, value: Tensor) -> None:
        v = value.detach().float()
        self._sum = v if self._sum is None else self._sum + v
        self.n += 1

    def mean(self) -> float | None:
        return None if self.n == 0 else float(self._sum) / self.n
