"""3D ResNets from pytorchvideo's builders: Slow-R50, I3D-R50, R(2+1)D-R50, CSN-R101, and a
CPU-sized I3D. All use pytorchvideo's `Net`: blocks = [stem, res2..res5 (+ pools), head]."""
from __future__ import annotations

from typing import Optional

from torch import nn

from dtkd.models.layers import pytorchvideo_module
from dtkd.models.registry import register_model
from dtkd.models.spec import KINETICS_MEAN, KINETICS_STD, ModelSpec, Published

_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_PTV = "pytorchvideo model zoo"
_VIEW = "per 256x256 test view"

# The I3D layout (pytorchvideo i3d_r50): 5x7x7 stem, a temporal max-pool after res2, inflated
# 3x1x1 conv_a kernels in alternating blocks.
_I3D = dict(
    stem_conv_kernel_size=(5, 7, 7),
    stage1_pool=nn.MaxPool3d,
    stage_conv_a_kernel_size=((3, 1, 1), [(3, 1, 1), (1, 1, 1)], [(3, 1, 1), (1, 1, 1)], [(1, 1, 1), (3, 1, 1)]),
)
# Every head pools adaptively: identical to the builders' fixed-kernel average pool at the
# standard clip, and valid for any other clip size.
_ADAPTIVE_HEAD = dict(head_pool=nn.AdaptiveAvgPool3d, head_output_size=(1, 1, 1), head_activation=None)


def _cnn_spec(name, frames, rate, crop, *, tap, dim, url, published, scale="paper", desc=""):
    return ModelSpec(
        name=name, family="cnn", frames=frames, sampling_rate=rate, crop_size=crop, mean=KINETICS_MEAN,
        std=KINETICS_STD, tap=tap, tap_kind="cnn5d", tap_layout="ncthw", feature_dim=dim,
        head=f"blocks.{int(tap.split('.')[1]) + 1}.proj", weights_url=url, scale=scale, description=desc,
        published=tuple(published),
    )


def _dropout(value: Optional[float], default: float) -> float:
    return default if value is None else value


@register_model(_cnn_spec(
    "slow_r50", 8, 8, 224, tap="blocks.4", dim=2048, url=f"{_ZOO}/SLOW_8x8_R50.pyth",
    published=[Published(_PTV, 32.45, 54.52, 8, 256, note=_VIEW)], desc="Slow-only R50 8x8, pytorchvideo",
))
def slow_r50(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return pytorchvideo_module("resnet").create_resnet(
        model_depth=50, stem_conv_kernel_size=(1, 7, 7), model_num_class=num_classes,
        dropout_rate=_dropout(dropout, 0.5), **_ADAPTIVE_HEAD,
    )


# res5 is block 5 here: the temporal max-pool after res2 is its own block.
@register_model(_cnn_spec(
    "i3d_r50", 8, 8, 224, tap="blocks.5", dim=2048, url=f"{_ZOO}/I3D_8x8_R50.pyth",
    published=[Published(_PTV, 28.04, 37.53, 8, 256, note=_VIEW),
               Published("paper Table 8", 27.33, 33.27, note="27.33 M = this model with a 51-class head")],
    desc="I3D R50 8x8, pytorchvideo",
))
def i3d_r50(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return pytorchvideo_module("resnet").create_resnet(
        model_depth=50, model_num_class=num_classes, dropout_rate=_dropout(dropout, 0.5), **_I3D, **_ADAPTIVE_HEAD,
    )


@register_model(_cnn_spec(
    "i3d_tiny", 8, 4, 64, tap="blocks.5", dim=256, url=None, published=(), scale="tiny",
    desc="CPU-sized I3D: the i3d_r50 layout at 1/8 width",
))
def i3d_tiny(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return pytorchvideo_module("resnet").create_resnet(
        model_depth=50, stem_dim_out=8, model_num_class=num_classes, dropout_rate=_dropout(dropout, 0.2),
        **_I3D, **_ADAPTIVE_HEAD,
    )


@register_model(_cnn_spec(
    "r2plus1d_r50", 16, 4, 224, tap="blocks.4", dim=2048, url=f"{_ZOO}/R2PLUS1D_16x4_R50.pyth",
    published=[Published(_PTV, 28.11, 76.45, 16, 256, note=_VIEW)], desc="R(2+1)D R50 16x4, pytorchvideo",
))
def r2plus1d_r50(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return pytorchvideo_module("r2plus1d").create_r2plus1d(
        model_num_class=num_classes, dropout_rate=_dropout(dropout, 0.5), **_ADAPTIVE_HEAD,
    )


@register_model(_cnn_spec(
    "csn_r101", 32, 2, 224, tap="blocks.4", dim=2048, url=f"{_ZOO}/CSN_32x2_R101.pyth",
    published=[Published(_PTV, 22.21, 75.62, 32, 256, note=_VIEW)], desc="ir-CSN R101 32x2, pytorchvideo",
))
def csn_r101(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return pytorchvideo_module("csn").create_csn(
        model_depth=101, stem_pool=nn.MaxPool3d, model_num_class=num_classes,
        dropout_rate=_dropout(dropout, 0.0), **_ADAPTIVE_HEAD,
    )
