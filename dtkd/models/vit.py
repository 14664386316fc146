"""Video transformers: MViTv2-S (the paper's ViT teacher) and Swin3D from torchvision, MViT-B from
pytorchvideo, and CPU-sized MViTv2 and Video Swin teachers built from torchvision's classes."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn
from torchvision.models import video as tv_video  # Swin3D builders
from torchvision.models.video.mvit import MSBlockConfig, MViT
from torchvision.models.video.swin_transformer import SwinTransformer3d

from dtkd.models.layers import DropoutLinear, pytorchvideo_module
from dtkd.models.registry import register_model
from dtkd.models.spec import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, ModelSpec, Published

_TV = "torchvision"


def _check_mvit_input(name: str, frames: int, crop_size: int, patch_stride=(2, 4, 4)) -> None:
    # MViT's positional grid is fixed at build time from (frames, crop) / patch stride; the clip must tile it.
    st, ss = patch_stride[0], patch_stride[1]
    if frames % st or crop_size % ss:
        raise ValueError(f"{name}: frames must be a multiple of {st} and crop_size of {ss} "
                         f"(patch stride {st}x{ss}x{ss}), got frames={frames}, crop_size={crop_size}")


def _vit_spec(name, frames, rate, crop, *, tap, layout, dim, head, url, published, mean, std,
              scale="paper", desc=""):
    return ModelSpec(
        name=name, family="vit", frames=frames, sampling_rate=rate, crop_size=crop, mean=mean, std=std,
        tap=tap, tap_kind="vit_tokens", tap_layout=layout, feature_dim=dim, head=head, weights_url=url,
        scale=scale, description=desc, published=tuple(published),
    )


# ---- MViTv2 (torchvision's MViT class) ----------------------------------------------------------
_K = [3, 3, 3]


def mvit_v2_blocks(dims=(96, 192, 384, 768), depths=(1, 2, 11, 2), heads=(1, 2, 4, 8), kv_stride=8):
    """MViTv2 block settings. The first block of each later stage pools the queries 2x spatially
    and doubles the width; key/value pooling starts at `kv_stride` and halves with each stage,
    so keys stay on a small grid. The defaults are MViTv2-S (torchvision's mvit_v2_s)."""
    blocks = []
    for stage, (dim, depth, head) in enumerate(zip(dims, depths, heads)):
        for j in range(depth):
            transition = stage > 0 and j == 0
            if transition:
                kv_stride = max(1, kv_stride // 2)
            blocks.append(MSBlockConfig(head, dims[stage - 1] if transition else dim, dim, _K, _K,
                                        [1, 2, 2] if transition else [1, 1, 1], [1, kv_stride, kv_stride]))
    return blocks


def _mvit_v2(num_classes: int, blocks, *, frames: int, crop_size: int, dropout: float,
             stochastic_depth_prob: float, patch_stride=(2, 4, 4)) -> MViT:
    # torchvision's mvit_v2_s switches: relative positions, residual pooling, projection after
    # attention, no class-token residual. Built from the class so any clip size can be set.
    return MViT(
        spatial_size=(crop_size, crop_size), temporal_size=frames, block_setting=blocks,
        residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True,
        dropout=dropout, stochastic_depth_prob=stochastic_depth_prob, num_classes=num_classes,
        patch_embed_stride=tuple(patch_stride),
    )


# Tap the last block: its output is (tokens incl. class token, thw) before the final norm and the
# class-token read-out, i.e. the last-stage token grid.
@register_model(_vit_spec(
    "mvit_v2_s", 16, 4, 224, tap="blocks.15", layout="cls_tokens_thw", dim=768, head="head.1",
    url="https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth",
    mean=KINETICS_MEAN, std=KINETICS_STD, desc="MViTv2-S 16x4, torchvision MViT",
    published=[Published(_TV, 34.54, 64.22, 16, 224),
               Published("paper Table 8", 34.50, 64.45, 16, 224)],
))
def mvit_v2_s(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None,
              stochastic_depth_prob: float = 0.2) -> nn.Module:
    _check_mvit_input("mvit_v2_s", frames, crop_size)
    return _mvit_v2(num_classes, mvit_v2_blocks(), frames=frames, crop_size=crop_size,
                    dropout=0.5 if dropout is None else dropout, stochastic_depth_prob=stochastic_depth_prob)


# MViTv2 in miniature: at 8x64^2 the patch grid is 4x16x16 -> 4x8x8 -> 4x4x4, widths 32-64-128.
_TINY_BLOCKS = mvit_v2_blocks(dims=(32, 64, 128), depths=(1, 2, 2), heads=(1, 2, 4), kv_stride=4)


@register_model(_vit_spec(
    "mvit_tiny", 8, 4, 64, tap=f"blocks.{len(_TINY_BLOCKS) - 1}", layout="cls_tokens_thw", dim=128,
    head="head.1", url=None, published=(), mean=KINETICS_MEAN, std=KINETICS_STD, scale="tiny",
    desc=f"CPU-sized MViTv2 ({len(_TINY_BLOCKS)} blocks, widths 32-64-128)",
))
def mvit_tiny(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None,
              stochastic_depth_prob: float = 0.0, patch_stride: Sequence[int] = (2, 4, 4),
              stem: str = "patch") -> nn.Module:
    """``patch_stride`` (t, h, w) of the patch embedding: (1, 2, 2) keeps 4x the tokens of a small
    clip (at 8x32^2: 8x16x16 -> 8x8x8 -> 8x4x4), for a ViT on low-resolution video.
    ``stem``: ``patch`` (MViTv2's one 3x7x7 convolution) or ``conv`` (a stack of 3x3x3
    convolutions with the same total stride, Xiao et al. 2021, "Early Convolutions Help
    Transformers See Better": steadier optimisation of a ViT trained from little data)."""
    _check_mvit_input("mvit_tiny", frames, crop_size, patch_stride)
    model = _mvit_v2(num_classes, _TINY_BLOCKS, frames=frames, crop_size=crop_size,
                     dropout=0.2 if dropout is None else dropout, stochastic_depth_prob=stochastic_depth_prob,
                     patch_stride=patch_stride)
    if stem == "conv":
        model.conv_proj = conv_stem(model.conv_proj.out_channels, patch_stride)
    elif stem != "patch":
        raise ValueError(f"mvit_tiny: stem must be 'patch' or 'conv', got {stem!r}")
    return model


def conv_stem(dim: int, stride: Sequence[int]) -> nn.Sequential:
    """3x3x3 convolutions (BN, ReLU) whose strides multiply to ``stride``, halving space per layer,
    then a 1x1x1 projection to ``dim`` (Xiao et al. 2021 Sec. 3, for video: time is strided in the
    first layer that has temporal stride left)."""
    layers, width, t_left, s_left = [], 3, stride[0], stride[1]
    out = max(8, dim // 2)
    while s_left > 1 or t_left > 1:
        st, ss = (2 if t_left > 1 else 1), (2 if s_left > 1 else 1)
        layers += [nn.Conv3d(width, out, 3, (st, ss, ss), 1, bias=False), nn.BatchNorm3d(out), nn.ReLU(inplace=True)]
        width, t_left, s_left = out, t_left // st, s_left // ss
    layers.append(nn.Conv3d(width, dim, 1))
    return nn.Sequential(*layers)


# ---- MViT-B (pytorchvideo) ----------------------------------------------------------------------
@register_model(_vit_spec(
    "mvit_b", 16, 4, 224, tap="blocks.15", layout="cls_tokens_thw", dim=768, head="head.proj",
    url="https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/MVIT_B_16x4.pyth",
    mean=KINETICS_MEAN, std=KINETICS_STD, desc="MViT-B 16x4 (MViTv1), pytorchvideo",
    published=[Published(f"{_TV} mvit_v1_b (same architecture)", 36.61, 70.60, 16, 224),
               Published("MViT paper", 36.6, 70.5, 16, 224)],
))
def mvit_b(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None,
           droppath_rate_block: float = 0.0) -> nn.Module:
    _check_mvit_input("mvit_b", frames, crop_size)
    hub = pytorchvideo_module("hub.vision_transformers")
    cfg = dict(hub.mvit_video_base_config, spatial_size=crop_size, temporal_size=frames)
    return pytorchvideo_module("vision_transformers").create_multiscale_vision_transformers(
        **cfg, head_num_classes=num_classes, head_dropout_rate=0.5 if dropout is None else dropout,
        droppath_rate_block=droppath_rate_block,
    )


# ---- Swin3D (torchvision) -----------------------------------------------------------------------
# Tap the final LayerNorm: its (B, T, H, W, C) output is exactly what gets average-pooled.
_SWIN = {
    # name: (feature dim, weights file, torchvision figure, Video Swin paper figure)
    "swin3d_t": (768, "swin3d_t-7615ae03.pth", (28.16, 43.88), (28.2, 88.0)),
    "swin3d_s": (768, "swin3d_s-da41c237.pth", (49.82, 82.84), (49.8, 166.0)),
    "swin3d_b": (1024, "swin3d_b_1k-24f7c7c6.pth", (88.05, 140.67), (88.1, 282.0)),
}

for _name, (_dim, _file, _tv, _paper) in _SWIN.items():
    _published = [Published(_TV, _tv[0], _tv[1], 16, 224, note="torchvision quotes 16-frame clips"),
                  Published("Video Swin paper", _paper[0], _paper[1], 32, 224)]
    if _name == "swin3d_b":
        _published.append(Published("paper Table 8", 88.05, 282.0, 32, 224))

    def _make(name=_name, dim=_dim, file=_file, published=tuple(_published)):
        @register_model(_vit_spec(
            name, 32, 2, 224, tap="norm", layout="nthwc", dim=dim, head="head",
            url=f"https://download.pytorch.org/models/{file}", mean=IMAGENET_MEAN, std=IMAGENET_STD,
            published=published, desc=f"Video Swin-{name[-1].upper()} 32x2, torchvision",
        ))
        def factory(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None,
                    stochastic_depth_prob: Optional[float] = None) -> nn.Module:
            kwargs = {} if stochastic_depth_prob is None else {"stochastic_depth_prob": stochastic_depth_prob}
            model = getattr(tv_video, name)(weights=None, num_classes=num_classes, **kwargs)
            return _swin_head_dropout(model, dropout)

    _make()


def _swin_head_dropout(model: nn.Module, dropout: Optional[float]) -> nn.Module:
    # torchvision's Swin3D head has no dropout; keep the key names, add it on request.
    if dropout:
        old = model.head
        model.head = DropoutLinear(old.in_features, old.out_features, dropout)
        model.head.load_state_dict(old.state_dict())
    return model


# Video Swin in miniature: at 16x32^2 the patch grid is 8x8x8 -> 8x4x4 -> 8x2x2 (Swin merges
# patches in space only), widths 32-64-128, windows of 4x4x4 tokens (smaller grids shrink them).
_TINY_SWIN = dict(patch_size=[2, 4, 4], embed_dim=32, depths=[1, 2, 2], num_heads=[1, 2, 4], window_size=[4, 4, 4])


@register_model(_vit_spec(
    "swin3d_tiny", 8, 4, 64, tap="norm", layout="nthwc", dim=128, head="head", url=None, published=(),
    mean=IMAGENET_MEAN, std=IMAGENET_STD, scale="tiny",
    desc="CPU-sized Video Swin (torchvision's SwinTransformer3d, 3 stages, widths 32-64-128)",
))
def swin3d_tiny(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None,
                stochastic_depth_prob: float = 0.0, stem: str = "patch") -> nn.Module:
    """A second ViT family at the size of ``mvit_tiny`` (Table 7's other transformer). ``stem``
    as for ``mvit_tiny``: ``patch`` (Swin's strided 2x4x4 convolution) or ``conv`` (3x3x3
    convolutions with the same total stride, Xiao et al. 2021). Any clip size works: the patch
    embedding pads and the windows shrink to a smaller grid."""
    model = SwinTransformer3d(**_TINY_SWIN, stochastic_depth_prob=stochastic_depth_prob, num_classes=num_classes)
    if stem == "conv":
        model.patch_embed.proj = conv_stem(_TINY_SWIN["embed_dim"], _TINY_SWIN["patch_size"])
    elif stem != "patch":
        raise ValueError(f"swin3d_tiny: stem must be 'patch' or 'conv', got {stem!r}")
    return _swin_head_dropout(model, 0.2 if dropout is None else dropout)
