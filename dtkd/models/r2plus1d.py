"""R(2+1)D-34 (Tran et al. 2018), the paper's "R(2+1)D" CNN teacher (213 GFLOPs, ~63.6 M params:
the 34-layer network on 32-frame clips, as in mmaction2's r2plus1d_r34 32x2x1, whose FLOPs are
per 256x256 test view; it trains on 224x224 crops).

pytorchvideo only builds the bottleneck R(2+1)D-50 and torchvision's VideoResNet sizes the second
conv of each block from the block's input width, so this module builds the 34-layer network
directly: every 3x3x3 conv is factorised into a 1x3x3 spatial conv to M channels, BN, ReLU and a
3x1x1 temporal conv, with M chosen per conv so the pair has the parameters of the 3D conv."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dtkd.models.registry import register_model
from dtkd.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Published


def mid_channels(c_in: int, c_out: int, kt: int, k: int) -> int:
    """M such that (k*k*c_in + kt*c_out) * M ~= kt*k*k*c_in*c_out (the paper's Eq. for M_i)."""
    return (kt * k * k * c_in * c_out) // (k * k * c_in + kt * c_out)


class Conv2Plus1d(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, *, kt: int = 3, k: int = 3, stride: tuple[int, int] = (1, 1)) -> None:
        st, ss = stride
        mid = mid_channels(c_in, c_out, kt, k)
        super().__init__(
            nn.Conv3d(c_in, mid, (1, k, k), stride=(1, ss, ss), padding=(0, k // 2, k // 2), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, c_out, (kt, 1, 1), stride=(st, 1, 1), padding=(kt // 2, 0, 0), bias=False),
        )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = Conv2Plus1d(c_in, c_out, stride=stride)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = Conv2Plus1d(c_out, c_out)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != (1, 1) or c_in != c_out:
            st, ss = stride
            self.shortcut = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=(st, ss, ss), bias=False), nn.BatchNorm3d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class R2Plus1D(nn.Module):
    def __init__(self, num_classes: int, *, depths=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            Conv2Plus1d(3, widths[0], kt=3, k=7, stride=(1, 2)),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        stages, c_in = [], widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stride = (1, 1) if i == 0 else (2, 2)  # res3..res5 halve time and space
            stages.append(nn.Sequential(*[BasicBlock(c_in if j == 0 else width, width, stride if j == 0 else (1, 1))
                                          for j in range(depth)]))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.dropout(self.pool(x).flatten(1)))


@register_model(ModelSpec(
    name="r2plus1d_r34", family="cnn", frames=32, sampling_rate=2, crop_size=224, mean=IMAGENET_MEAN,
    std=IMAGENET_STD, tap="stages", tap_kind="cnn5d", tap_layout="ncthw", feature_dim=512, head="fc",
    weights_url=None,  # mmaction2's checkpoint uses its own module names; not mapped here
    scale="paper", description="R(2+1)D-34 32x2 (the paper's R(2+1)D teacher), dtkd implementation",
    published=(Published("mmaction2 r2plus1d_r34 32x2x1", 63.8, 213.0, 32, 256, note="per 256x256 test view"),
               Published("paper Table 8", 63.58, 213.0, 32, 256, note="per 256x256 test view")),
))
def r2plus1d_r34(num_classes: int, *, frames: int, crop_size: int, dropout: Optional[float] = None) -> nn.Module:
    return R2Plus1D(num_classes, dropout=0.5 if dropout is None else dropout)
