"""From a DataConfig to what training needs: the dataset on disk, its manifest, its store."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from dtkd.data.config import DataConfig
from dtkd.data.manifest import build_manifest, carve_validation
from dtkd.data.synthetic import generate_synthetic
from dtkd.data.unlabelled import unlabelled_entries, with_unlabelled

if TYPE_CHECKING:
    from dtkd.data.store import ClipStore


def prepare_manifest(cfg: DataConfig, *, workers: int = 1) -> pd.DataFrame:
    """Generate the synthetic set if configured (reused when present with the same knobs),
    then build the manifest with ``cfg.on_bad_video`` deciding what bad videos do, and carve the
    validation split out of train (``cfg.val``) when the config asks for one, and append the
    unlabelled transfer set (``cfg.unlabelled``, split ``unlabelled``, label_idx -1)."""
    if cfg.dataset == "synthetic":
        generate_synthetic(cfg.root, **cfg.synthetic.model_dump())
    manifest = build_manifest(cfg.dataset, cfg.root, split=cfg.split, on_error=cfg.on_bad_video, workers=workers,
                              **cfg.reader)
    manifest = carve_validation(manifest, cfg.val.fraction, seed=cfg.val.seed)
    if cfg.unlabelled is not None:
        entries = unlabelled_entries(cfg.unlabelled, split=cfg.split,
                                     synthetic_root=cfg.root if cfg.dataset == "synthetic" else None)
        manifest = with_unlabelled(manifest, entries, on_error=cfg.on_bad_video, workers=workers)
    return manifest


def prepare_store(cfg: DataConfig, manifest: pd.DataFrame) -> ClipStore | None:
    """Build (or reuse, when sources and size are unchanged) the clip store of a clean
    manifest; None when the store is disabled."""
    from dtkd.data.store import build_store  # torch + torchvision: only the store needs them

    if not cfg.store.enabled:
        return None
    if "ok" in manifest.columns:
        manifest = manifest[manifest["ok"].astype(bool)]
    return build_store(manifest, cfg.store.dir, short_side=cfg.store.short_side, overwrite=True)
