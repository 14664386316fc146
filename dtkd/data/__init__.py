"""Data layer: synthetic generator, dataset formats -> manifest, decoding, clip sampling,
transforms, ClipDataset and the pre-decoded clip store. Core library: no MLOps imports."""
from dtkd.data.config import DataConfig
from dtkd.data.dataset import ClipDataset
from dtkd.data.errors import AnnotationError, VideoDecodeError
from dtkd.data.formats import DATASETS
from dtkd.data.manifest import MANIFEST_COLUMNS, build_manifest, class_names, manifest_fingerprint, num_classes_of
from dtkd.data.store import ClipStore, build_store
from dtkd.data.video import available_backends, probe_video, read_frames, write_video
from dtkd.data.views import STUDENT_VIEW, ViewSpec

__all__ = [
    "AnnotationError", "ClipDataset", "ClipStore", "DATASETS", "DataConfig", "MANIFEST_COLUMNS",
    "STUDENT_VIEW", "VideoDecodeError", "ViewSpec", "available_backends", "build_manifest", "build_store",
    "class_names", "generate_synthetic", "manifest_fingerprint", "num_classes_of", "prepare_manifest", "prepare_store", "probe_video",
    "read_frames", "write_video",
]

# Imported on first use: `python -m dtkd.data.synthetic` must not find the module already loaded
# by this package (runpy warns about that).
_LAZY = {"generate_synthetic": "dtkd.data.synthetic", "prepare_manifest": "dtkd.data.prepare",
         "prepare_store": "dtkd.data.prepare"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dtkd.data' has no attribute {name!r}")
