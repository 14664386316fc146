"""Typed configuration of the data layer (the ``data:`` section of a dtkd config)."""
from __future__ import annotations

from pathlib import Path
import inspect
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dtkd.data.formats import DATASETS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClipsPerClass(_Strict):
    train: int = Field(12, ge=1)
    val: int = Field(0, ge=0, description="validation clips (split id 3); 0: none, carve one with `data.val`")
    test: int = Field(6, ge=1)
    unused: int = Field(0, ge=0, description="clips in no split (id 0): the pool `data.unlabelled: synthetic` reads")


class SyntheticConfig(_Strict):
    """Knobs of dtkd.data.synthetic.generate_synthetic (same names, passed through as is)."""

    num_classes: int = Field(6, ge=2, le=30, description="classes (target vocabulary: up to 8; pretrain: up to 30)")
    vocabulary: Literal["target", "pretrain"] = Field("target", description="target: the task; pretrain: the "
                                                      "composed pretraining corpus (docs/data.md)")
    clips_per_class: ClipsPerClass = ClipsPerClass()
    frames: int = Field(16, ge=2)
    size: int = Field(64, ge=8)
    fps: int = Field(8, ge=1)
    seed: int = 0
    difficulty: Literal["easy", "default", "hard"] = Field("default", description="nuisance preset")

    @field_validator("size")
    @classmethod
    def _even(cls, size: int) -> int:
        if size % 2:
            raise ValueError(f"size must be even (yuv420p video), got {size}")
        return size

    @model_validator(mode="after")
    def _classes_in_vocabulary(self) -> "SyntheticConfig":
        from dtkd.data.synthetic_scenes import VOCABULARIES

        most = len(VOCABULARIES[self.vocabulary])
        if self.num_classes > most:
            raise ValueError(f"num_classes={self.num_classes}: the {self.vocabulary} vocabulary has at most {most}")
        return self


class StoreConfig(_Strict):
    """Pre-decoded clip store (dtkd.data.store); ``short_side`` None keeps the decoded size."""

    enabled: bool = False
    dir: Optional[Path] = None
    short_side: Optional[int] = Field(None, ge=8)

    @model_validator(mode="after")
    def _dir_when_enabled(self) -> "StoreConfig":
        if self.enabled and self.dir is None:
            raise ValueError("store.dir is required when store.enabled is true")
        return self


class ValSplitConfig(_Strict):
    """A validation split carved out of train (dtkd.data.manifest.carve_validation): what every
    choice (epochs, learning rate, weights, the best checkpoint) is made on, so that test is only
    reported. Recorded in the manifest's ``split`` column."""

    fraction: float = Field(0.0, ge=0, lt=1, description="share of each class's train clips moved to `val` (0: none; "
                            "the Trainer then validates on `test`)")
    seed: int = Field(0, description="which clips move: ordered by sha256(seed, video_id)")


class QualityRules(_Strict):
    """Thresholds of the data quality gate (``data.quality`` of a run config; dtkd_ops.quality runs
    it with Great Expectations). The one place they live: the pipeline's ``validate_data`` step and
    the DVC ``quality`` stage both read this section of the same run config.

    The label set comes from here or from the data, never from a dataset's name: with neither
    ``expected_labels`` nor ``expected_num_classes`` set, the labels the videos carry are the set
    (the synthetic set's are its generator's class names)."""

    expected_labels: Optional[list[str]] = Field(None, description="the label set must equal this one")
    expected_num_classes: Optional[int] = Field(None, gt=0, description="used when the names are not listed")
    # header frames minus decoded frames above which a video counts as incomplete (truncated or
    # damaged mid-file): the larger of an absolute tail (containers over-report by a frame or two,
    # B-frames) and a fraction of the declared length, so the check scales with the video
    max_missing_frames: int = Field(2, ge=0)
    max_missing_fraction: float = Field(0.05, ge=0.0, le=1.0)
    max_decode_errors: int = Field(0, ge=0, description="packets that failed to decode (garbage inside the file)")
    min_frames: Optional[int] = Field(None, ge=1, description="clip length; null: the longest view any model reads "
                                      "(frames x sampling rate)")
    min_fps: float = Field(1.0, gt=0)
    max_fps: float = Field(120.0, gt=0)
    min_width: int = Field(16, ge=1)
    min_height: int = Field(16, ge=1)
    min_duration_s: float = Field(0.0, ge=0)
    min_videos_per_class: int = Field(1, ge=0, description="per split, after quarantine (0: a class may be absent "
                                      "from a split, e.g. the actions of a multi-head dataset such as EPIC-KITCHENS)")
    max_class_imbalance: float = Field(3.0, ge=1.0, description="max/min videos per class within a split")
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)
    required_splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train", "test"])
    check_duplicates: bool = Field(True, description="sha256 of every file's bytes")

    @model_validator(mode="after")
    def _ranges(self) -> "QualityRules":
        if self.min_fps > self.max_fps:
            raise ValueError(f"min_fps ({self.min_fps}) is greater than max_fps ({self.max_fps})")
        if self.expected_labels is not None:
            if len(set(self.expected_labels)) != len(self.expected_labels):
                raise ValueError("expected_labels has duplicates")
            if self.expected_num_classes is not None and self.expected_num_classes != len(self.expected_labels):
                raise ValueError(
                    f"expected_num_classes ({self.expected_num_classes}) != len(expected_labels) "
                    f"({len(self.expected_labels)})"
                )
        return self


class DataConfig(_Strict):
    dataset: str = "synthetic"
    root: Path = Path("data/synthetic")
    reader: dict[str, Any] = Field(default_factory=dict, description="options of the dataset's reader, e.g. hmdb51: "
                                   "video_dir, split_dir; ucf101: video_dir, list_dir (dtkd.data.formats)")
    split: int = Field(1, ge=1, le=3, description="official fold (hmdb51/ucf101: 1-3; others: 1)")
    synthetic: SyntheticConfig = SyntheticConfig()
    store: StoreConfig = StoreConfig()
    num_workers: int = Field(0, ge=0)
    # Area range of the training random-resized crop. Keep the lower bound high when classes depend
    # on objects far apart in the frame (the synthetic set): a small crop can cut one of them out.
    train_scale: tuple[float, float] = (0.25, 1.0)
    backend: Literal["pyav", "torchcodec"] = "pyav"
    # What build_manifest does with a missing/undecodable video: "flag" keeps it for the
    # quality gate to quarantine, "raise" stops, "skip" drops it with a warning.
    on_bad_video: Literal["raise", "flag", "skip"] = "flag"
    val: ValSplitConfig = ValSplitConfig()
    quality: QualityRules = QualityRules()
    unlabelled: Optional[str] = Field(None, description="the unlabelled transfer set (distill.transfer_set): a folder "
                                      "of videos in any layout, or 'synthetic' (the generator's unused clips)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS.names())}")
        return name

    @model_validator(mode="after")
    def _reader_options(self) -> "DataConfig":
        """Reader options are checked against the reader's own keyword arguments, so a typo fails
        here, naming the options the reader has."""
        params = inspect.signature(DATASETS.get(self.dataset)).parameters
        allowed = sorted(name for name, p in params.items() if p.kind is p.KEYWORD_ONLY)
        unknown = sorted(set(self.reader) - set(allowed))
        if unknown:
            raise ValueError(f"reader: {self.dataset} has no option(s) {unknown}; its options: {allowed or 'none'}")
        return self

    @field_validator("train_scale")
    @classmethod
    def _scale_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        low, high = scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"train_scale must satisfy 0 < low <= high <= 1, got {scale}")
        return scale

    def dataset_kwargs(self) -> dict:
        """Keyword arguments for ClipDataset beyond the contract's positional ones."""
        return {
            "store": self.store.dir if self.store.enabled else None,
            "backend": self.backend,
            "train_scale": tuple(self.train_scale),
        }
