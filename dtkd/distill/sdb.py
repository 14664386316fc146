"""The Structure Discrepancy Branch g_SDB (paper §3.4, Eq. 11): training-only head.

g_SDB(f_S) = head(SE(NL(f_S))), with the variants of Table 6: ``nl``, ``se``, ``nl+se``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

SDB_VARIANTS: tuple[str, ...] = ("nl", "se", "nl+se")


class NonLocal3d(nn.Module):
    """Non-local block, embedded Gaussian (Wang et al. 2018), over all T*H*W positions.

    theta/phi/g are 1x1x1 convs to C/2 channels; attention = softmax(theta^T phi / sqrt(C/2))
    (the scaled dot product of method notes SDD 5; Wang et al. use it unscaled); the output
    1x1x1 conv is followed by a BatchNorm whose affine parameters start at zero, so the block
    starts as the identity and the residual connection carries f_S unchanged at step 0.
    No sub-sampling of phi/g: the student's last-stage grid is small (e.g. 13x5x5).
    """

    def __init__(self, channels: int, inner_channels: int | None = None) -> None:
        super().__init__()
        inner = inner_channels or max(channels // 2, 1)
        self.inner = inner
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.out = nn.Conv3d(inner, channels, 1)
        self.bn = nn.BatchNorm3d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, t, h, w = x.shape
        # (B, 1, L, inner): one attention "head" over the L = T*H*W positions.
        q = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)
        k = self.phi(x).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.g(x).flatten(2).transpose(1, 2).unsqueeze(1)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(inner)) v
        y = y.squeeze(1).transpose(1, 2).reshape(b, self.inner, t, h, w)
        return x + self.bn(self.out(y))


class SqueezeExcite3d(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) on 5-D maps, reduction 16 by default."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * self.fc2(F.relu(self.fc1(s))).sigmoid()


class StructureDiscrepancyBranch(nn.Module):
    """hat f_res = head(SE(NL(f_S))), head = 1x1x1 conv to the residual's channel count.

    Paper Eq. 11 writes SE(NL(f_S)); the channel-changing head is dtkd's (method notes SDD 5):
    the residual lives in the ViT's (or its PCA's) channel space, the student in its own.
    ``variant`` picks the Table 6 ablation: ``nl`` (NL only), ``se`` (SE only), ``nl+se``.
    """

    def __init__(self, in_channels: int, out_channels: int, variant: str = "nl+se", se_reduction: int = 16) -> None:
        super().__init__()
        if variant not in SDB_VARIANTS:
            raise ValueError(f"unknown SDB variant {variant!r}; known: {', '.join(SDB_VARIANTS)}")
        parts = set(variant.split("+"))
        self.variant = variant
        self.nl = NonLocal3d(in_channels) if "nl" in parts else nn.Identity()
        self.se = SqueezeExcite3d(in_channels, se_reduction) if "se" in parts else nn.Identity()
        self.head = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, student_feat: Tensor) -> Tensor:
        return self.head(self.se(self.nl(student_feat)))
