"""Multi-head labels (e.g. EPIC-KITCHENS' verb and noun) and the logits of a multi-head model.

Convention: a multi-head model is the backbone built for ``layout.total`` classes, its logits
the heads' logits side by side in ``layout`` order; ``layout.split(logits)`` cuts them apart.
One Linear to the concatenated outputs is exactly one Linear per head stacked, so no wrapper is
needed and everything that handles one logits tensor (teacher cache, feature taps, export, DDP)
keeps working. A label is one integer, the mixed-radix code of the per-head classes (first head
most significant: action = verb * num_nouns + noun), so a batch's target stays a (B,) tensor;
-1 (an unlabelled clip) stays -1 in every head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class HeadLayout:
    names: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.names or len(self.names) != len(self.sizes):
            raise ValueError(f"heads: need one size per name, got {self.names} and {self.sizes}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"heads: names must be unique, got {list(self.names)}")
        if "action" in self.names:
            raise ValueError("heads: 'action' is reserved for the all-heads-right metric")
        bad = [f"{n}: {s!r}" for n, s in zip(self.names, self.sizes) if not isinstance(s, int) or s < 2]
        if bad:
            raise ValueError(f"heads: every head needs >= 2 classes, got {', '.join(bad)}")

    @classmethod
    def of(cls, heads: Mapping[str, int]) -> "HeadLayout":
        return cls(tuple(heads), tuple(int(v) for v in heads.values()))

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.names, self.sizes))

    @property
    def spec(self) -> str:
        """The layout as one string, ``"verb:97,noun:300"`` (a manifest's ``heads`` column)."""
        return ",".join(f"{n}:{s}" for n, s in zip(self.names, self.sizes))

    @classmethod
    def parse(cls, spec: str) -> "HeadLayout":
        """Inverse of ``spec``; a malformed string is an error quoting it."""
        try:
            pairs = [part.split(":") for part in spec.split(",")]
            return cls(tuple(n for n, _ in pairs), tuple(int(v) for _, v in pairs))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"heads {spec!r}: expected 'name:classes,name:classes' ({exc})") from exc

    @property
    def total(self) -> int:
        """Logits of the model: the heads' class counts summed."""
        return sum(self.sizes)

    @property
    def combinations(self) -> int:
        """Label codes: the product of the class counts."""
        return int(np.prod(self.sizes, dtype=np.int64))

    def split(self, logits: Tensor) -> dict[str, Tensor]:
        """(..., total) -> {head: (..., size)} (views, no copy)."""
        if logits.shape[-1] != self.total:
            raise ValueError(f"heads {self.as_dict()}: expected {self.total} logits, got {logits.shape[-1]}")
        return dict(zip(self.names, logits.split(list(self.sizes), dim=-1)))

    def encode(self, labels: Mapping[str, Sequence[int]] | Sequence[Sequence[int]]) -> np.ndarray:
        """Per-head class indices (a mapping head -> values, or rows of one value per head) ->
        int64 codes. An index outside its head is an error naming the head and value."""
        if isinstance(labels, Mapping):
            cols = [np.asarray(labels[n], dtype=np.int64) for n in self.names]
        else:
            arr = np.asarray(labels, dtype=np.int64).reshape(-1, len(self.names))
            cols = [arr[:, i] for i in range(len(self.names))]
        code = np.zeros_like(cols[0])
        for name, size, col in zip(self.names, self.sizes, cols):
            bad = col[(col < 0) | (col >= size)]
            if bad.size:
                raise ValueError(f"head {name!r} has {size} classes; got class index {int(bad[0])}")
            code = code * size + col
        return code

    def decode(self, target: Tensor) -> dict[str, Tensor]:
        """Codes (B,) -> {head: (B,) class index}; -1 (unlabelled) stays -1 in every head."""
        out: dict[str, Tensor] = {}
        rest = target.clamp(min=0)
        for name, size in reversed(list(zip(self.names, self.sizes))):
            out[name] = torch.where(target < 0, target, rest % size)
            rest = rest // size
        return {n: out[n] for n in self.names}
