"""Shared fixtures: one tiny synthetic dataset per test session (real PyAV videos, ~0.2 s)."""
from __future__ import annotations

import pytest

TINY_SYNTHETIC = dict(num_classes=3, clips_per_class={"train": 4, "test": 2}, frames=16, size=32,
                      fps=8, seed=0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Root of a tiny synthetic dataset in the HMDB51 layout (3 classes x 6 clips, 16 x 32^2)."""
    from dtkd.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "root", **TINY_SYNTHETIC)


@pytest.fixture(scope="session")
def synthetic_manifest(synthetic_root):
    """Its manifest (split 1): 12 train rows, 6 test rows."""
    from dtkd.data import build_manifest

    return build_manifest("synthetic", synthetic_root, split=1)
