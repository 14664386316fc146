"""X3D (Feichtenhofer 2020) from pytorchvideo's builder: the paper's student family (X3D-S) and
its structurally aligned CNN teacher (X3D-M), plus CPU-sized variants of the same design."""
from __future__ import annotations

from typing import Optional

from torch import nn

from dtkd.models.layers import pytorchvideo_module
from dtkd.models.registry import register_model
from dtkd.models.spec import KINETICS_MEAN, KINETICS_STD, ModelSpec, Published

_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_PTV = "pytorchvideo model zoo"
_PYSF = "PySlowFast X3D model zoo"
_VIEW = "per test view, X3D test crop"


def _round_width(width: float, multiplier: float, divisor: int = 8) -> int:
    # The channel rounding X3D uses (nearest multiple of 8, never below 90 % of the target).
    width *= multiplier
    out = max(divisor, int(width + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * width else out)


def x3d_feature_dim(width_factor: float, bottleneck_factor: float = 2.25, stem_dim_in: int = 12) -> int:
    """Channels of the X3D head's conv5 output (what FeatureTap reads): the last stage width,
    expanded by the bottleneck factor."""
    last = stem_dim_in
    for _ in range(3):
        last = _round_width(last, 2.0)
    return int(bottleneck_factor * _round_width(last, width_factor))


def _x3d(
    num_classes: int,
    *,
    frames: int,
    crop_size: int,
    dropout: Optional[float],
    width_factor: float,
    depth_factor: float,
    bottleneck_factor: float = 2.25,
    head_dim_out: int = 2048,
    spatial_strides: tuple[int, ...] = (2, 2, 2, 2),
) -> nn.Module:
    net = pytorchvideo_module("x3d").create_x3d(
        input_clip_length=frames,
        input_crop_size=crop_size,
        model_num_class=num_classes,
        dropout_rate=0.5 if dropout is None else dropout,
        width_factor=width_factor,
        depth_factor=depth_factor,
        bottleneck_factor=bottleneck_factor,
        head_dim_out=head_dim_out,
        stage_spatial_stride=tuple(spatial_strides),
        head_activation=None,  # logits, not pytorchvideo's default softmax
        # nn.SiLU is x*sigmoid(x), like pytorchvideo's Swish, with a native backward (no
        # deprecated autograd Function, faster on CPU); no parameters, so checkpoints still load.
        inner_act=nn.SiLU,
    )
    # The builder sizes the head's average pool for one clip size; adaptive pooling is the same
    # operation at that size and lets one model take any clip (no parameters involved).
    net.blocks[-1].pool.pool = nn.AdaptiveAvgPool3d(1)
    return net


def _spec(name, frames, rate, crop, width, *, url, published, scale="paper", desc="", bottleneck=2.25):
    return ModelSpec(
        name=name,
        family="cnn",
        frames=frames,
        sampling_rate=rate,
        crop_size=crop,
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        tap="blocks.5.pool.pre_act",  # conv5 (1x1x1 conv + BN + ReLU) output, before pool5
        tap_kind="cnn5d",
        tap_layout="ncthw",
        feature_dim=x3d_feature_dim(width, bottleneck),
        head="blocks.5.proj",
        weights_url=url,
        scale=scale,
        description=desc,
        published=tuple(published),
    )


def _register_paper(name, frames, rate, crop, depth_factor, published):
    spec = _spec(name, frames, rate, crop, 2.0, url=f"{_ZOO}/{name.upper()}.pyth", published=published,
                 desc=f"X3D-{name.split('_')[1].upper()}, pytorchvideo create_x3d, {frames}x{rate}")

    @register_model(spec)
    def factory(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
        return _x3d(num_classes, frames=frames, crop_size=crop_size, dropout=dropout,
                    width_factor=2.0, depth_factor=depth_factor)

    return factory


_register_paper("x3d_xs", 4, 12, 160, 2.2, [
    Published(_PTV, 3.79, 0.91, 4, 182, note=_VIEW),
    Published(_PYSF, 3.8, 0.60, 4, 160),
])
_register_paper("x3d_s", 13, 6, 160, 2.2, [
    Published(_PTV, 3.79, 2.96, 13, 182, note=_VIEW),
    Published(_PYSF, 3.8, 1.96, 13, 160),
    Published("paper Table 8", 3.76, 2.45, 16, 160, note="paper clips are 16 frames"),
])
_register_paper("x3d_m", 16, 5, 224, 2.2, [
    Published(_PTV, 3.79, 6.72, 16, 256, note=_VIEW),
    Published(_PYSF, 3.8, 4.73, 16, 224),
])
_register_paper("x3d_l", 16, 5, 312, 5.0, [
    Published(_PTV, 6.15, 26.64, 16, 356, note=_VIEW),
    Published(_PYSF, 6.2, 18.37, 16, 312),
])


# CPU-sized variants for the embedded default and tests (8 frames x 64^2 clips). The student keeps
# X3D's design at half width and unit depth; its teacher is the X3D-S width at 1.5x the depth.
# `spatial_strides` (one per res stage, X3D's is 2,2,2,2: 32x in all with the stem) lets a small
# clip keep a spatial grid: at 32^2, (2, 2, 2, 1) leaves a 2x2 last-stage map instead of 1x1,
# as X3D-S's 160^2 input leaves 5x5.
TINY = {
    "x3d_tiny": dict(width_factor=1.0, depth_factor=1.0, head_dim_out=256),
    "x3d_tiny_m": dict(width_factor=2.0, depth_factor=1.5, head_dim_out=512),
}

for _name, _cfg in TINY.items():
    def _make(cfg=_cfg, name=_name):
        spec = _spec(name, 8, 4, 64, cfg["width_factor"], url=None, published=(), scale="tiny",
                     desc=f"CPU-sized X3D (width x{cfg['width_factor']}, depth x{cfg['depth_factor']})")

        @register_model(spec)
        def factory(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None,
                    depth_factor: float = cfg["depth_factor"], head_dim_out: int = cfg["head_dim_out"],
                    spatial_strides: tuple[int, ...] = (2, 2, 2, 2)) -> nn.Module:
            # Lighter default head dropout: these heads are narrow and the embedded data is small.
            if len(spatial_strides) != 4 or any(s not in (1, 2) for s in spatial_strides):
                raise ValueError(f"spatial_strides: four strides of 1 or 2 (one per stage), got {spatial_strides!r}")
            return _x3d(num_classes, frames=frames, crop_size=crop_size, dropout=0.2 if dropout is None else dropout,
                        width_factor=cfg["width_factor"], depth_factor=depth_factor, head_dim_out=head_dim_out,
                        spatial_strides=tuple(spatial_strides))

    _make()
