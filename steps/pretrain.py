"""Pretrain one model on the pretraining corpus and register it for fine-tuning runs to reference."""
from __future__ import annotations

import time
from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from dtkd.config import PretrainingConfig, PretrainStage
from dtkd.data import manifest_fingerprint
from steps.stack import tracking_uri
from dtkd_ops.registry import ModelRegistry
from dtkd_ops.shipped import (TAG_KEY, TAG_STAGE, TAG_TOP1, find_shipped, load_state_dict, pretrain_key,
                               source_tags, stage_key)
from steps.data_version import lineage_tags
from steps.tracking import TRACKED, fit_and_test


def _registered_before(registry: ModelRegistry, name: str, key: str):
    return next((v for v in reversed(registry.versions(name)) if v.tags.get(TAG_KEY) == key), None)


@step(**TRACKED)
def pretrain_model(manifest: pd.DataFrame, stage: PretrainStage,
                   pretraining: PretrainingConfig) -> Annotated[str, "pretrained_uri"]:
    """Pretrain ``stage.role``'s model with CE, register it as ``<registry_prefix>-<role>`` and point
    ``pretraining.alias`` at it. A version already registered for the same stage and corpus is
    reused (the registry, not ZenML's cache, is what fine-tuning runs read); else a backbone the
    repository ships for exactly this pretraining (``pretraining.shipped``, dtkd_ops.shipped) is
    loaded, tested and registered instead of trained. Returns its URI."""
    registry = ModelRegistry(tracking_uri())
    name = f"{pretraining.registry_prefix}-{stage.role}"
    key = pretrain_key(stage, manifest)
    found = _registered_before(registry, name, key)
    reused = found is not None
    if not reused:
        shipped = find_shipped(pretraining.shipped, name, key)
        start = time.perf_counter()
        job, metrics = fit_and_test(stage, manifest, f"pretrain_{stage.role}",
                                    state_dict=load_state_dict(shipped) if shipped else None)
        found = registry.register_candidate(
            job.model, registered_name=name, metrics=metrics, alias=pretraining.alias,
            params={"model": stage.model.name, "role": stage.role, "classes": int(manifest["label_idx"].max()) + 1},
            tags={"dtkd.role": f"pretrained_{stage.role}", TAG_KEY: key, TAG_STAGE: stage_key(stage),
                  TAG_TOP1: f"{metrics['top1']:.6f}", **source_tags(shipped, time.perf_counter() - start),
                  **lineage_tags(stage.data)},
            dataset_fingerprint=manifest_fingerprint(manifest), input_spec=stage.model.input_spec(),
            build_options=stage.model.overrides)
        how = f"loaded from {shipped.weights} (shipped for this pretraining)" if shipped else "trained"
        print(f"pretrained {stage.role} ({stage.model.name}), {how}: corpus test top-1 {metrics['top1']:.4f}, "
              f"registered {name} v{found.version}")
    else:
        registry.client.set_registered_model_alias(name, pretraining.alias, str(found.version))
        print(f"pretrained {stage.role}: reusing {name} v{found.version} (same stage and corpus)")
    log_metadata(metadata={"registered": found.uri, "reused": reused})
    return found.uri
