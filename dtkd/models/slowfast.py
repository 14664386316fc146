"""SlowFast (Feichtenhofer et al. 2019) from pytorchvideo's builder, packed so that it takes one
(B, C, T, H, W) clip like every other dtkd model: the fast pathway sees all T frames, the slow
pathway every alpha-th frame."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dtkd.models.layers import check_clip, pathway_slow, pytorchvideo_module
from dtkd.models.registry import register_model
from dtkd.models.spec import KINETICS_MEAN, KINETICS_STD, ModelSpec, Published

_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_PTV = "pytorchvideo model zoo"
_VIEW = "per 256x256 test view"


class PackedSlowFast(nn.Module):
    """Runs pytorchvideo's SlowFast blocks on [slow, fast] pathways cut from one clip.

    The blocks are held as `self.blocks`, as in pytorchvideo's Net, so official checkpoints load
    with their own key names."""

    def __init__(self, net: nn.Module, alpha: int) -> None:
        super().__init__()
        self.blocks = net.blocks
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(x, "SlowFast")
        if x.shape[2] % self.alpha:
            raise ValueError(f"SlowFast needs a frame count divisible by alpha={self.alpha}, got {x.shape[2]}")
        out = [pathway_slow(x, self.alpha), x]
        for block in self.blocks:
            out = block(out)
        return out


def _slowfast(num_classes: int, *, alpha: int, fusion_kernel: int, dropout: float, depth: int = 50,
              stem_dim_outs: tuple[int, int] = (64, 8)) -> PackedSlowFast:
    net = pytorchvideo_module("slowfast").create_slowfast(
        model_depth=depth,
        model_num_class=num_classes,
        dropout_rate=dropout,
        stem_dim_outs=stem_dim_outs,
        slowfast_channel_reduction_ratio=(stem_dim_outs[0] // stem_dim_outs[1],),
        slowfast_fusion_conv_kernel_size=(fusion_kernel, 1, 1),
        slowfast_fusion_conv_stride=(alpha, 1, 1),  # fast -> slow lateral connections span alpha frames
        head_pool=nn.AdaptiveAvgPool3d,  # any clip size; same as the fixed pool at the standard clip
        head_output_size=((1, 1, 1), (1, 1, 1)),
        head_activation=None,
    )
    return PackedSlowFast(net, alpha)


def _spec(name, frames, rate, crop, *, dim, url, published, scale="paper", desc=""):
    # The tap is res5 of both pathways; FeatureTap averages the fast pathway onto the slow
    # pathway's frames and concatenates channels: exactly what the head pools (slow + fast dims).
    return ModelSpec(
        name=name, family="cnn", frames=frames, sampling_rate=rate, crop_size=crop, mean=KINETICS_MEAN,
        std=KINETICS_STD, tap="blocks.4", tap_kind="cnn5d", tap_layout="pathways", feature_dim=dim,
        head="blocks.6.proj", weights_url=url, scale=scale, description=desc, published=tuple(published),
    )


# "8x8": slow 8 frames at stride 8, fast 32 frames at stride 2 (alpha 4): the clip is 32x2.
@register_model(_spec(
    "slowfast_r50", 32, 2, 224, dim=2048 + 256, url=f"{_ZOO}/SLOWFAST_8x8_R50.pyth",
    published=[Published(_PTV, 34.57, 65.71, 32, 256, note=_VIEW),
               Published("paper Table 8", 34.40, 36.10, 32, 256, note="that is the 4x16 model, slowfast_r50_4x16")],
    desc="SlowFast R50 8x8 (alpha 4), pytorchvideo",
))
def slowfast_r50(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return _slowfast(num_classes, alpha=4, fusion_kernel=7, dropout=0.5 if dropout is None else dropout)


# "4x16": slow 4 frames at stride 16, fast 32 at stride 2 (alpha 8), PySlowFast's 5x1x1 fusion.
@register_model(_spec(
    "slowfast_r50_4x16", 32, 2, 224, dim=2048 + 256, url=f"{_ZOO}/SLOWFAST_4x16_R50.pyth",
    published=[Published(_PTV, 34.48, 36.69, 32, 256, note=_VIEW),
               Published("paper Table 8", 34.40, 36.10, 32, 256, note=_VIEW)],
    desc="SlowFast R50 4x16 (alpha 8), pytorchvideo builder",
))
def slowfast_r50_4x16(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return _slowfast(num_classes, alpha=8, fusion_kernel=5, dropout=0.5 if dropout is None else dropout)


# CPU-sized: one bottleneck per stage, 1/2 width (slow 32 -> 1024, fast 4 -> 128 channels).
@register_model(_spec(
    "slowfast_tiny", 8, 4, 64, dim=1024 + 128, url=None, published=(), scale="tiny",
    desc="CPU-sized SlowFast (depth 18 layout, half width, alpha 4)",
))
def slowfast_tiny(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return _slowfast(num_classes, alpha=4, fusion_kernel=7, depth=18, stem_dim_outs=(32, 4),
                     dropout=0.2 if dropout is None else dropout)
