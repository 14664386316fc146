"""Pretrained backbones shipped with the repository (``weights/pretrained/``).

The paper's models start from Kinetics-400 weights that their authors publish; dtkd's embedded
default starts from backbones pretrained on the embedded corpus (``pipelines.pretraining``), which
cost a 2-core machine most of a first ``make run``. So the project publishes them the way model
authors do: each registered pretrained backbone is exported here (``python -m dtkd_ops.shipped
export``) as a tensors-only state dict plus a JSON record of the pretraining it came from (the
pretraining key: stage config and corpus rows, file contents included), its corpus test top-1
and where it was trained (commit, machine, threads, date).

The pretraining step uses a shipped backbone only when its key equals the key of the pretraining
it was asked to run (``find_shipped``): the same model, view, training config and corpus bytes.
Anything else (another config, another corpus, a user's own data) trains as before. The step
still tests the loaded backbone on the corpus and registers it like a trained one, tagged
``dtkd.pretrain.source=shipped``. ``pretraining.shipped: null`` in a run config turns it off.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from dtkd.fsutil import atomic_write_bytes
from dtkd.host import cpu_model
from dtkd_ops.home import REPO_ROOT

TAG_KEY = "dtkd.pretrain.key"  # on every registered pretrained version: the pretraining it ran
TAG_SOURCE = "dtkd.pretrain.source"  # "trained" or "shipped:<file>"
TAG_STAGE = "dtkd.pretrain.stage_key"  # the stage config alone (no corpus rows)
TAG_TOP1 = "dtkd.pretrain.corpus_test_top1"
TAG_HOST = "dtkd.pretrain.host"  # .cpu, .threads, .seconds: where and how long it trained
_HOST_KEYS = ("cpu", "threads", "seconds")
DEFAULT_DIR = REPO_ROOT / "weights" / "pretrained"
_WHERE = {"data": {"root": True, "num_workers": True, "store": {"dir"}}}  # where the corpus lies, not what it is


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_key(stage, manifest) -> str:
    """Names one pretraining (a ``PretrainStage`` on a corpus manifest): the stage (model, view,
    training, corpus config) and the corpus rows with their file contents, not where the corpus
    lies (its root, store folder and loader workers)."""
    from dtkd.data import manifest_fingerprint

    return _digest({"stage": stage.model_dump(mode="json", exclude=_WHERE), "rows": manifest_fingerprint(manifest)})


def stage_key(stage) -> str:
    """The stage part of :func:`pretrain_key` alone: tells, without the corpus, whether a config
    still asks for the pretraining a shipped backbone records."""
    return _digest(stage.model_dump(mode="json", exclude=_WHERE))


@dataclass(frozen=True)
class Shipped:
    name: str  # registered model name, e.g. dtkd-pretrained-cnn
    weights: Path
    meta: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_shipped(directory: Optional[os.PathLike | str], name: str, key: str) -> Optional[Shipped]:
    """The shipped backbone ``name`` if it is the result of pretraining ``key``, else None (no
    directory, no record, or a record of another pretraining). A record whose weights are missing
    or whose bytes differ from the recorded sha256 is an error naming the file."""
    if directory is None:
        return None
    directory = Path(directory) if Path(directory).is_absolute() else REPO_ROOT / directory  # the repository's folder
    record = directory / f"{name}.json"
    if not record.is_file():
        return None
    try:
        meta = json.loads(record.read_text())
        recorded_key, weights, digest = meta["key"], directory / meta["weights"], meta["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{record}: not a shipped-backbone record (needs key, weights, sha256): {exc}") from exc
    if recorded_key != key:
        return None
    if not weights.is_file():
        raise FileNotFoundError(f"{record} names weights {weights}, which does not exist")
    actual = _sha256(weights)
    if actual != digest:
        raise ValueError(f"{weights}: sha256 {actual[:16]}... differs from {digest[:16]}... recorded in {record} "
                         "(a damaged or replaced file; export it again: python -m dtkd_ops.shipped export)")
    return Shipped(name, weights, meta)


def load_state_dict(shipped: Shipped) -> dict:
    """The shipped state dict (tensors only: no code is unpickled)."""
    import torch

    return torch.load(shipped.weights, map_location="cpu", weights_only=True)


def host_tags(seconds: float) -> dict[str, str]:
    """Where a backbone was trained (results differ between CPUs and thread counts): this machine."""
    import torch

    return {f"{TAG_HOST}.cpu": cpu_model(), f"{TAG_HOST}.threads": str(torch.get_num_threads()),
            f"{TAG_HOST}.seconds": f"{seconds:.0f}"}


def source_tags(shipped: Optional[Shipped], seconds: float) -> dict[str, str]:
    """A registered pretrained version's ``TAG_SOURCE`` and ``TAG_HOST.*``: this machine's for a
    backbone trained here (in ``seconds``), the record's for a shipped one."""
    if shipped is None:
        return {TAG_SOURCE: "trained", **host_tags(seconds)}
    trained = shipped.meta.get("trained", {})
    return {TAG_SOURCE: f"shipped:{shipped.weights.name}",
            **{f"{TAG_HOST}.{k}": str(trained[k]) for k in _HOST_KEYS if trained.get(k) is not None}}


def export(name: str, directory: os.PathLike | str = DEFAULT_DIR, *, which: str = "pretrained",
           tracking_uri: Optional[str] = None) -> Path:
    """Write the registered pretrained version ``name@which`` (alias or number) of ``tracking_uri``
    (default: ``$MLFLOW_TRACKING_URI``, else the local stack's store) to ``directory``:
    ``<name>.pt`` (its state dict) and ``<name>.json`` (key, sha256, model, corpus test top-1,
    provenance). Refuses a version without a pretraining key (nothing could ever match it)."""
    from dtkd_ops.home import tracking_uri as local_store
    from dtkd_ops.pretrained import PREFIX, fetch_weights
    from dtkd_ops.registry import ModelRegistry

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store()
    registry = ModelRegistry(tracking_uri)
    version = registry.get_version(name, int(which) if which.isdigit() else which)
    key = version.tags.get(TAG_KEY)
    if not key:
        raise ValueError(f"{name} v{version.version} has no {TAG_KEY} tag: not registered by the pretraining pipeline")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.pt"
    source = fetch_weights(f"{PREFIX}{name}/{version.version}", tracking_uri=tracking_uri)
    atomic_write_bytes(weights, source.read_bytes())
    tags = version.tags
    meta = {
        "name": name, "key": key, "stage_key": tags.get(TAG_STAGE), "weights": weights.name, "sha256": _sha256(weights),
        "architecture": tags.get("dtkd.architecture"), "role": tags.get("dtkd.role"),
        "corpus_test_top1": float(tags[TAG_TOP1]) if TAG_TOP1 in tags else None,
        "trained": {"registered": f"{name} v{version.version}", "source": tags.get(TAG_SOURCE),
                    "code_commit": tags.get("dtkd.code.git_commit"), "data_dvc_hash": tags.get("dtkd.data.dvc_hash"),
                    **{k: tags.get(f"{TAG_HOST}.{k}") for k in _HOST_KEYS},
                    "exported": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
    }
    atomic_write_bytes(directory / f"{name}.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return weights


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dtkd_ops.shipped", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write registered pretrained backbones to the shipped folder")
    ex.add_argument("names", nargs="*", default=[f"dtkd-pretrained-{r}" for r in ("cnn", "vit", "student")])
    ex.add_argument("--alias", default="pretrained", help="alias or version number to export")
    ex.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = p.parse_args(argv)
    from dtkd_ops.home import tracking_uri as local_store

    uri = os.environ.get("MLFLOW_TRACKING_URI") or local_store()  # once: loading a model may set the variable
    for name in args.names:
        path = export(name, args.dir, which=args.alias, tracking_uri=uri)
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
