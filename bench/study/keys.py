"""What names a trained model or a cell: content, never location. A key changes when anything that
can change the numbers changes (stage config, data rows, weights, torch, thread count) and stays
the same when only paths or the cache folder move."""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch

from bench.methods import _digest

KEY_VERSION = 1  # bump when what a cached file holds, or how it is computed, changes
_LOCATION_KEYS = ("root", "num_workers")  # where the data lies / how it is read, not what it is
# Options added to the config after cells were cached, at their "off" value: they change no number,
# so they do not change a key either (a cache stays valid when the library grows an option).
_ADDED_OFF = {("data", "unlabelled"): None, ("data", "synthetic", "clips_per_class", "unused"): 0,
              ("distill", "transfer_set"): False}
# A baseline's own knobs (``at_weight``, ``dkd_beta``...) change no number of another method: they
# are left out of every other method's key, so mending one baseline recomputes only its cells.
_METHOD_KNOBS = ("dkd", "at", "mgd", "ofa", "cakd", "pixelkd")


def stage_json(stage) -> dict:
    """A stage's validated config as JSON, without data locations and without ``pretrained``
    paths (the weights behind them are keyed by their own hash by the caller)."""
    data = stage.model_dump(mode="json")
    for key in _LOCATION_KEYS:
        data["data"].pop(key, None)
    data["data"].get("store", {}).pop("dir", None)
    for ref in _model_refs(data):
        ref.pop("pretrained", None)
    for path, off in _ADDED_OFF.items():
        parent = data
        for key in path[:-1]:
            parent = parent.get(key, {}) if isinstance(parent, dict) else {}
        if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] == off:
            del parent[path[-1]]
    distill = data.get("distill")
    if isinstance(distill, dict):
        for method in _METHOD_KNOBS:
            if distill.get("method") != method:
                for knob in [k for k in distill if k.startswith(method + "_")]:
                    del distill[knob]
    return data


def _model_refs(stage: dict) -> list[dict]:
    refs = [stage[k] for k in ("model", "student") if k in stage]
    return refs + list(stage.get("teachers", {}).values())


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def environment(threads: int) -> dict[str, Any]:
    """What else changes float results: the torch build and the intra-op thread count."""
    return {"torch": torch.__version__, "threads": int(threads), "key_version": KEY_VERSION}


def digest(payload: Any) -> str:
    return _digest(payload, 20)
