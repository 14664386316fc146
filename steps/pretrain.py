"""Pretrain one model on the pretraining corpus and register it for fine-tuning runs to reference."""
from __future__ import annotations

import hashlib
import json
from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from dtkd.config import PretrainingConfig, PretrainStage
from dtkd.data import manifest_fingerprint
from steps.stack import tracking_uri
from dtkd_ops.registry import ModelRegistry
from steps.data_version import lineage_tags
from steps.tracking import TRACKED, fit_and_test

TAG_KEY = "dtkd.pretrain.key"


def pretrain_key(stage: PretrainStage, manifest: pd.DataFrame) -> str:
    """Names one pretraining: the stage (model, view, training, corpus config) and the corpus rows,
    not where the corpus lies (its root, store folder and loader workers)."""
    where = {"data": {"root": True, "num_workers": True, "store": {"dir"}}}
    payload = {"stage": stage.model_dump(mode="json", exclude=where), "rows": manifest_fingerprint(manifest)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _registered_before(registry: ModelRegistry, name: str, key: str):
    return next((v for v in reversed(registry.versions(name)) if v.tags.get(TAG_KEY) == key), None)


@step(**TRACKED)
def pretrain_model(manifest: pd.DataFrame, stage: PretrainStage,
                   pretraining: PretrainingConfig) -> Annotated[str, "pretrained_uri"]:
    """Pretrain ``stage.role``'s model with CE, register it as ``<registry_prefix>-<role>`` and point
    ``pretraining.alias`` at it. A version already registered for the same stage and corpus is
    reused (the registry, not ZenML's cache, is what fine-tuning runs read). Returns its URI."""
    registry = ModelRegistry(tracking_uri())
    name = f"{pretraining.registry_prefix}-{stage.role}"
    key = pretrain_key(stage, manifest)
    found = _registered_before(registry, name, key)
    reused = found is not None
    if not reused:
        job, metrics = fit_and_test(stage, manifest, f"pretrain_{stage.role}")
        found = registry.register_candidate(
            job.model, registered_name=name, metrics=metrics, alias=pretraining.alias,
            params={"model": stage.model.name, "role": stage.role, "classes": int(manifest["label_idx"].max()) + 1},
            tags={"dtkd.role": f"pretrained_{stage.role}", TAG_KEY: key, **lineage_tags(stage.data)},
            dataset_fingerprint=manifest_fingerprint(manifest), input_spec=stage.model.input_spec(),
            build_options=stage.model.overrides)
        print(f"pretrained {stage.role} ({stage.model.name}): corpus test top-1 {metrics['top1']:.4f}, "
              f"registered {name} v{found.version}")
    else:
        registry.client.set_registered_model_alias(name, pretraining.alias, str(found.version))
        print(f"pretrained {stage.role}: reusing {name} v{found.version} (same stage and corpus)")
    log_metadata(metadata={"registered": found.uri, "reused": reused})
    return found.uri
