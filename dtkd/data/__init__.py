"""Data layer: synthetic generator, dataset formats -> manifest, decoding, clip sampling,
transforms, ClipDataset and the pre-decoded clip store. Core library: no MLOps imports."""
from __future__ import annotations

import importlib

# Every name is imported on first use, from its module: importing one module of the package
# (`dtkd.data.config`, what a config needs) does not import the others, so the DVC data stages
# that only probe videos or validate a config start without torch and torchvision (~7 s each
# here), and `python -m dtkd.data.synthetic` does not find its module already loaded (runpy warns).
_HOME = {
    "DataConfig": "config", "ClipDataset": "dataset", "AnnotationError": "errors", "VideoDecodeError": "errors",
    "DATASETS": "formats", "MANIFEST_COLUMNS": "manifest", "build_manifest": "manifest", "class_names": "manifest",
    "manifest_fingerprint": "manifest", "num_classes_of": "manifest", "ClipStore": "store", "build_store": "store",
    "available_backends": "video", "probe_video": "video", "read_frames": "video", "write_video": "video",
    "STUDENT_VIEW": "views", "ViewSpec": "views", "generate_synthetic": "synthetic",
    "prepare_manifest": "prepare", "prepare_store": "prepare",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"dtkd.data.{_HOME[name]}"), name)
    raise AttributeError(f"module 'dtkd.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
