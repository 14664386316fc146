"""Pretrained weights by registry reference: ``pretrained: models:/<name>@<alias>`` in a run config.

The pretraining pipeline (``pipelines.pretraining``) registers each pretrained backbone in MLflow.
A training run names it by alias; :func:`pin_registry_refs` turns every alias into the version it
points at when the pipeline is compiled (so ZenML's step cache, keyed on the stage config, sees a
new pretrained version as a new input), and a step calls :func:`resolve_ref` to get a local
weights file (the state dict, written once per version under ``DTKD_HOME/pretrained``) that the
core library loads like any other checkpoint. A real user sets the same key to a downloaded
Kinetics checkpoint (a path or URL) and none of this is involved.
"""
from __future__ import annotations

import hashlib

import io
import re
from pathlib import Path
from typing import Optional, TypeVar

from dtkd.config import TEACHER_ROLES, DTKDConfig, ModelRef
from dtkd.fsutil import atomic_write_bytes
from dtkd_ops.home import dtkd_home
from dtkd_ops.registry import ModelRegistry, ModelVersionRef, RegistryError

PREFIX = "models:/"
_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
Ref = TypeVar("Ref", bound=ModelRef)


def is_registry_uri(value: Optional[str]) -> bool:
    return bool(value) and value.startswith(PREFIX)


def parse_registry_uri(uri: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, alias or version)."""
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"{uri!r}: expected models:/<registered model>@<alias> or models:/<registered model>/<version>")
    return m["name"], m["alias"] or m["version"]


def _version(uri: str, tracking_uri: Optional[str]) -> ModelVersionRef:
    name, which = parse_registry_uri(uri)
    try:
        return ModelRegistry(tracking_uri).get_version(name, int(which) if which.isdigit() else which)
    except RegistryError as err:
        raise ValueError(f"pretrained: {uri}: {err} (run the pretraining pipeline first: make pretrain)") from None


def pin_registry_refs(cfg: DTKDConfig, *, tracking_uri: Optional[str] = None) -> DTKDConfig:
    """``cfg`` with every ``models:/name@alias`` in ``models.*.pretrained`` replaced by the
    version number it points at now (``models:/name/<version>``)."""
    update = {}
    for key in ("student", *(f"{role}_teacher" for role in TEACHER_ROLES)):
        ref = getattr(cfg.models, key)
        if is_registry_uri(ref.pretrained):
            pinned = _version(ref.pretrained, tracking_uri)
            update[key] = ref.model_copy(update={"pretrained": f"{PREFIX}{pinned.name}/{pinned.version}"})
    if not update:
        return cfg
    return cfg.model_copy(update={"models": cfg.models.model_copy(update=update)})


def resolve_ref(ref: Ref, *, tracking_uri: Optional[str] = None, cache_dir: Optional[Path] = None) -> Ref:
    """``ref`` with a registry ``pretrained`` replaced by a local state-dict file (others as is)."""
    if not is_registry_uri(ref.pretrained):
        return ref
    return ref.model_copy(update={"pretrained": str(fetch_weights(ref.pretrained, tracking_uri=tracking_uri,
                                                                  cache_dir=cache_dir))})


def fetch_weights(uri: str, *, tracking_uri: Optional[str] = None, cache_dir: Optional[Path] = None) -> Path:
    """The state dict of the registered model ``uri`` as a local file (downloaded once per version).
    The file is named by the version's logged model too: two registries (the local stack and the
    team server, a registry rebuilt after `make clean`) each have their own `v1`, and a file named
    by name and number alone would hand one registry's weights to the other."""
    import torch

    version = _version(uri, tracking_uri)
    ident = hashlib.sha256(f"{version.model_uri}|{version.run_id}".encode()).hexdigest()[:12]
    path = Path(cache_dir or dtkd_home() / "pretrained") / f"{version.name}-v{version.version}-{ident}.pt"
    if not path.is_file():
        model = ModelRegistry(tracking_uri).load_model(version.name, version.version)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path
