"""Turn decoded uint8 frames into one normalised view tensor (torchvision.transforms.v2)."""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from dtkd.data.sampling import Box
from dtkd.data.views import ViewSpec


def crop_resize(frames: torch.Tensor, box: Box, size: int, *, flip: bool = False) -> torch.Tensor:
    """uint8 (T, H, W, C) -> uint8 (T, C, size, size): crop `box`, resize (antialiased), flip."""
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 (T, H, W, C) frames, got {frames.dtype} {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2)
    x = TF.resized_crop(x, box.top, box.left, box.height, box.width, [size, size], antialias=True)
    return TF.horizontal_flip(x) if flip else x


def normalize(clip: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (T, C, H, W) -> float (C, T, H, W), scaled to [0, 1] then standardised per channel."""
    x = TF.normalize(clip.float().div_(255.0), list(mean), list(std))
    return x.permute(1, 0, 2, 3).contiguous()


def render_view(frames: torch.Tensor, box: Box, spec: ViewSpec, *, flip: bool = False) -> torch.Tensor:
    """The frames already picked for this view -> float (C, T, crop, crop)."""
    return normalize(crop_resize(frames, box, spec.crop_size, flip=flip), spec.mean, spec.std)
