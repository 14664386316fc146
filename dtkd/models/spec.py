"""What the rest of dtkd needs to know about a model without building it: its standard input,
where its last feature map is, and the complexity figures published for it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

Family = Literal["cnn", "vit"]
TapKind = Literal["cnn5d", "vit_tokens"]
# How the tapped module returns its output (FeatureTap turns each into (B, C, T, H, W)):
#   "ncthw"          one (B, C, T, H, W) tensor (3D CNNs)
#   "pathways"       a list of (B, C_i, T_i, H, W) tensors, one per pathway (SlowFast)
#   "cls_tokens_thw" a tuple (tokens (B, 1 + T*H*W, C), [T, H, W]) (MViT blocks)
#   "nthwc"          one channels-last (B, T, H, W, C) tensor (Swin3D)
TapLayout = Literal["ncthw", "pathways", "cls_tokens_thw", "nthwc"]

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Input fields of a spec that build()/get_spec() overrides may change.
INPUT_FIELDS = ("frames", "sampling_rate", "crop_size")


@dataclass(frozen=True)
class Published:
    """One published complexity figure and the single-view input it refers to."""

    source: str
    params_m: Optional[float]
    gflops: Optional[float]
    frames: Optional[int] = None
    crop_size: Optional[int] = None
    note: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    frames: int
    sampling_rate: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tap: str  # dotted module name; its output is the last feature map before global pooling
    tap_kind: TapKind
    tap_layout: TapLayout
    feature_dim: int  # channels of FeatureTap.features
    head: str  # dotted name of the final nn.Linear classifier
    weights_url: Optional[str]
    scale: Literal["paper", "tiny"]
    description: str = ""
    published: tuple[Published, ...] = ()  # first entry: the reference figure for this build

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip at the standard input."""
        return (3, self.frames, self.crop_size, self.crop_size)

    @property
    def published_params_m(self) -> Optional[float]:
        return next((p.params_m for p in self.published if p.params_m is not None), None)

    @property
    def published_gflops(self) -> Optional[float]:
        return next((p.gflops for p in self.published if p.gflops is not None), None)

    def with_input(self, **changes: Optional[int]) -> "ModelSpec":
        """A copy with frames / sampling_rate / crop_size replaced (None keeps the value)."""
        bad = sorted(set(changes) - set(INPUT_FIELDS))
        if bad:
            raise TypeError(f"{self.name}: not input fields: {bad}; input fields: {list(INPUT_FIELDS)}")
        for key, value in changes.items():
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{self.name}: {key} must be a positive int, got {value!r}")
        kept = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **kept) if kept else self
