"""Load checkpoints into dtkd models: local files (torch.load with weights_only=True) or official
URLs (torch.hub cache). Whatever does not fit is reported, never silently dropped."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

# Checkpoint layouts seen in the wild: pytorchvideo {"model_state"}, Lightning/mmaction2
# {"state_dict"}, many training scripts {"model"}; dtkd's own trainer saves {"model_state"}.
_WRAPPER_KEYS = ("model_state", "state_dict", "model", "model_state_dict", "module")
# Prefixes that wrappers add to every key: DistributedDataParallel and torch.compile.
_PREFIXES = ("", "module.", "_orig_mod.", "module._orig_mod.")

Source = Union[str, Path, Mapping]


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, absent from the model
    skipped: dict[str, str] = field(default_factory=dict)  # present in both, shapes differ: key -> why
    head_skipped: bool = False  # the classifier was skipped (another class count): expected when fine-tuning

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.skipped)

    def summary(self, limit: int = 8) -> str:
        def few(keys) -> str:
            keys = list(keys)
            more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {few(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {few(self.unexpected)}")
        if self.skipped:
            parts.append("skipped (shape) " + few(f"{k} [{why}]" for k, why in self.skipped.items()))
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.summary()


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def read_state_dict(source: Source) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} from a path, URL or already-loaded dict, unwrapping common layouts."""
    if isinstance(source, Mapping):
        obj = source
    elif isinstance(source, str) and source.startswith("models:/"):
        # A model registry reference: the MLOps layer (dtkd_ops.pretrained) downloads it to a file.
        raise ValueError(f"{source}: a registry URI; resolve it to a file first "
                         "(dtkd_ops.pretrained.resolve_pretrained, which the pipelines call)")
    elif _is_url(source):
        obj = torch.hub.load_state_dict_from_url(str(source), map_location="cpu", progress=False, weights_only=True)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        obj = torch.load(path, map_location="cpu", weights_only=True)

    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"{_name(source)}: no state dict found; top-level keys: {sorted(map(str, obj))[:20]}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{_name(source)}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _name(source: Source) -> str:
    return "<state dict>" if isinstance(source, Mapping) else str(source)


def _align_prefix(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Re-key the checkpoint for the best overlap when one side is wrapped (DDP, torch.compile)."""
    best, best_hits = state, len(model_keys & state.keys())
    for strip in _PREFIXES:
        if not all(k.startswith(strip) for k in state):
            continue
        for add in _PREFIXES:
            cand = {add + k[len(strip):]: v for k, v in state.items()}
            hits = len(model_keys & cand.keys())
            if hits > best_hits:
                best, best_hits = cand, hits
    return best


def _classifier_name(model: nn.Module) -> Optional[str]:
    """The last nn.Linear in registration order: the classifier of every dtkd model."""
    return next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)


def load_weights(model: nn.Module, source: Source, *, strict: bool = False, head: Optional[str] = None) -> LoadReport:
    """Copy matching tensors from `source` into `model` and report the rest.

    A classifier (`head`, default: the model's last nn.Linear) with another class count is skipped
    and flagged in `head_skipped`: that is the fine-tuning case, not an error even when strict.
    strict=True raises ValueError on any other missing, unexpected or mis-shaped key."""
    model_state = model.state_dict()
    state = _align_prefix(read_state_dict(source), set(model_state))
    head = head or _classifier_name(model)
    report = LoadReport(source=_name(source))

    to_load = {}
    for key, value in state.items():
        if key not in model_state:
            report.unexpected.append(key)
        elif value.shape != model_state[key].shape:
            report.skipped[key] = f"checkpoint {tuple(value.shape)} vs model {tuple(model_state[key].shape)}"
        else:
            to_load[key] = value
    report.missing = [k for k in model_state if k not in state]
    report.loaded = sorted(to_load)

    head_keys = {k for k in report.skipped if head and _under(k, head)}
    report.head_skipped = bool(head_keys)
    if strict:
        problems = report.missing or report.unexpected or (report.skipped.keys() - head_keys)
        if problems:
            raise ValueError(f"strict load failed: {report.summary()}")
    model.load_state_dict(to_load, strict=False)
    return report


def _under(key: str, module_name: str) -> bool:
    return key.startswith(module_name + ".") or any(
        key.startswith(p + module_name + ".") for p in _PREFIXES if p
    )
