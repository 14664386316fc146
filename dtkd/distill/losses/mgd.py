"""Masked generative distillation (Yang et al. 2022), the "MGD" baseline, in 3-D."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import align_to_grid, check_5d


def random_spatiotemporal_mask(
    feat: Tensor, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """(B, 1, T, H, W) float mask: each location is dropped (0) with probability ``ratio``."""
    check_5d(feat, "random_spatiotemporal_mask")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    b, _, t, h, w = feat.shape
    u = torch.rand((b, 1, t, h, w), device=feat.device, generator=generator)
    return (u >= ratio).to(feat.dtype)


def mgd_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    generator: nn.Module,
    mask_ratio: float = 0.5,
    *,
    align: nn.Module | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """sum (G(align(f_S) * M) - f_T)^2 / B (Yang et al. 2022, §3: mask, generation, distillation loss).

    Yang, Li, Shao, Shi, Yuan and Yuan 2022, "Masked Generative Distillation": the student
    map (channel-aligned by a 1x1 conv when needed) is masked at random locations and a small
    generator must rebuild the teacher's *full* map. Video reading: the mask drops
    spatio-temporal locations (T, H, W) and the generator is 3-D (:class:`MGDGenerator3d`);
    the teacher map is average-pooled to the student's grid. The reduction is the paper's: sum
    over all elements divided by the batch size (so the weight alpha_mgd is small, 7e-5).
    Deviation: the authors' classification code masks whole channels instead; dtkd keeps the
    paper's spatial masking, extended to time. ``mask`` (B, 1, T, H, W) may be given
    (tests, reproducibility); otherwise it is drawn from torch's global RNG. Teacher detached.
    """
    check_5d(student_feat, "mgd_loss(student_feat)")
    check_5d(teacher_feat, "mgd_loss(teacher_feat)")
    s = align(student_feat) if align is not None else student_feat
    t = align_to_grid(teacher_feat.detach(), s.shape[2:])
    if s.shape[1] != t.shape[1]:
        raise ValueError(
            f"mgd_loss: student has {s.shape[1]} channels, teacher {t.shape[1]}; pass an align module"
        )
    if mask is None:
        mask = random_spatiotemporal_mask(s, mask_ratio)
    rebuilt = generator(s * mask.to(s.dtype))
    return (rebuilt.float() - t.float()).square().sum() / s.shape[0]


class MGDGenerator3d(nn.Sequential):
    """Yang's generator, 3-D: conv k^3 -> ReLU -> conv k^3, channels unchanged."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        pad = kernel_size // 2
        super().__init__(
            nn.Conv3d(channels, channels, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, kernel_size, padding=pad),
        )


class MGDLoss(nn.Module):
    """MGD's trainable parts (channel alignment + generator); training-only, never exported."""

    def __init__(
        self, student_channels: int, teacher_channels: int, mask_ratio: float = 0.5, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.mask_ratio = mask_ratio
        self.align = (
            nn.Conv3d(student_channels, teacher_channels, 1)
            if student_channels != teacher_channels
            else None
        )
        self.generator = MGDGenerator3d(teacher_channels, kernel_size)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, mask: Tensor | None = None) -> Tensor:
        return mgd_loss(
            student_feat, teacher_feat, self.generator, self.mask_ratio, align=self.align, mask=mask
        )
