"""Pixel distillation's input spatial representation distillation (ISRD), the "pixelkd" baseline.

Guo, Zhang, Han, Liu, Cheng and Han 2024, "Pixel Distillation: Cost-flexible Distillation across
Image Sizes and Heterogeneous Networks" (IEEE TPAMI, doi 10.1109/TPAMI.2024.3421277; arXiv
2112.09532v2). The student sees a *smaller* image than the teacher. ISRD (the paper's one-stage,
teacher-student setting) gives the student's input module a training-only decoder that
reconstructs the teacher's *large* image from the student's input-module features, so the small
input's representation must keep the spatial detail of the large one:

    L = L_task + eta * || D(f_S^in(I_small)) - I_large ||_1

with D = 1x1 conv (C -> 3 s^2 channels, no bias) -> pixel shuffle by s -> PReLU (one slope per
colour channel), s = ceil(size(I_large) / size(f_S^in)), cropped to the large image's size, and
L_task the logit KD of the teacher on I_large (Hinton KD at temperature T). We could not read
the PDF's equation numbering (only the abstract was reachable); the form above, the decoder and the
L1 mean reduction follow the authors' released code (github.com/gyguo/PixelDistillation:
``lib/models/hrir.py`` SR1x1, ``tools_1_ts/train_isrd_5runs.py``: ``kd + eta * L1(image_sr,
input_large)``, eta 50 at a 4x smaller input, 10 at 2x; the feature is the output of the
student's first convolution, before its BN).

Adapted for 3-D video (the deviations):

- resolution only changes in H and W, per frame; time is untouched. The decoder is applied to
  every frame alike: a 1x1x1 convolution and a per-frame pixel shuffle (:func:`pixel_shuffle_frames`,
  the same channel order as ``nn.PixelShuffle``), the L1 is averaged over B x 3 x T x H x W;
- the large clip the teacher sees may have other frames (count) or another normalisation than
  the student's clip. :func:`align_frames` picks, for each student frame, the large view's
  frame nearest in time (every dtkd view spreads its frames over the same window:
  ``dtkd.data.sampling.frame_indices``), and :func:`renormalize` maps the large clip into the
  student's normalisation, so the target is "the student's clip at the large resolution";
- when the reconstruction is not exactly the large size (a stride that does not divide), it is
  cropped (as the code does) when larger and resized bilinearly when smaller (never in the code's
  settings);
- the teacher-assistant-student (TAS) two-stage variant is not here (see
  ``dtkd.distill.methods_pixelkd``); the task term is dtkd's CE + weighted KD, not the code's
  (1 - alpha) CE + alpha KD (see docs/method.md).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check5(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected a (B, C, T, H, W) tensor, got {shape}")


def pixel_shuffle_frames(x: Tensor, factor: int) -> Tensor:
    """(B, C s^2, T, H, W) -> (B, C, T, H s, W s): ``nn.PixelShuffle(s)`` on every frame.

    Channel ``c s^2 + i s + j`` of input pixel (h, w) becomes output pixel (h s + i, w s + j) of
    channel c, as in ``nn.PixelShuffle``; frames never mix.
    """
    _check5(x, "pixel_shuffle_frames")
    s = int(factor)
    if s < 1:
        raise ValueError(f"pixel_shuffle_frames: factor must be >= 1, got {factor}")
    b, cs2, t, h, w = x.shape
    if cs2 % (s * s):
        raise ValueError(f"pixel_shuffle_frames: {cs2} channels are not a multiple of s^2 = {s * s}")
    c = cs2 // (s * s)
    return x.reshape(b, c, s, s, t, h, w).permute(0, 1, 4, 5, 2, 6, 3).reshape(b, c, t, h * s, w * s)


def align_frames(x: Tensor, frames: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C, ``frames``, H, W): for each output frame k, the input frame
    nearest in time, j = min(T - 1, floor(k T / frames + 1/2)): both clips spread their frames
    over one window (frame k of F at k / F of it), so j = round(k T / frames).

    The identity when T == ``frames``; frames 0, r, 2r, ... when T = r x ``frames``.
    """
    _check5(x, "align_frames")
    t = x.shape[2]
    if frames < 1:
        raise ValueError(f"align_frames: frames must be >= 1, got {frames}")
    if t == frames:
        return x
    idx = torch.clamp((torch.arange(frames, dtype=torch.float64) * t / frames + 0.5).floor().long(), max=t - 1)
    return x.index_select(2, idx.to(x.device))


def renormalize(
    x: Tensor,
    mean_from: Sequence[float],
    std_from: Sequence[float],
    mean_to: Sequence[float],
    std_to: Sequence[float],
) -> Tensor:
    """A clip normalised with (mean_from, std_from) per channel, normalised with (mean_to, std_to):
    ((x std_from + mean_from) - mean_to) / std_to, channel axis 1."""
    _check5(x, "renormalize")
    if list(mean_from) == list(mean_to) and list(std_from) == list(std_to):
        return x
    shape = (1, -1, 1, 1, 1)

    def col(v: Sequence[float]) -> Tensor:
        return torch.as_tensor(list(v), dtype=x.dtype, device=x.device).view(shape)

    return (x * col(std_from) + col(mean_from) - col(mean_to)) / col(std_to)


def match_size(recon: Tensor, height: int, width: int) -> Tensor:
    """The reconstruction at (height, width): cropped top-left when larger (the released code's
    crop), resized per frame (bilinear) when smaller in either axis."""
    _check5(recon, "match_size")
    b, c, t, h, w = recon.shape
    if h >= height and w >= width:
        return recon[..., :height, :width]
    frames = recon.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False)
    return frames.reshape(b, t, c, height, width).permute(0, 2, 1, 3, 4)


def isrd_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """L_ISRD = mean |D(f) - I_large| over every element (B x C x T x H x W), in float32.

    The target (the large clip, already aligned: :func:`isrd_target`) is data: detached.
    """
    _check5(reconstruction, "isrd_loss")
    if reconstruction.shape != target.shape:
        raise ValueError(f"isrd_loss: reconstruction {tuple(reconstruction.shape)} and target "
                         f"{tuple(target.shape)} differ")
    return (reconstruction.float() - target.detach().float()).abs().mean()


def isrd_target(
    large: Tensor,
    frames: int,
    norm_from: Optional[tuple[Sequence[float], Sequence[float]]] = None,
    norm_to: Optional[tuple[Sequence[float], Sequence[float]]] = None,
) -> Tensor:
    """The large clip as the student's clip at the large resolution: frames aligned to the
    student's (:func:`align_frames`), then renormalised (:func:`renormalize`) when both
    normalisations are given. No gradient."""
    x = align_frames(large.detach(), frames)
    if norm_from is not None and norm_to is not None:
        x = renormalize(x, norm_from[0], norm_from[1], norm_to[0], norm_to[1])
    return x


def upsampling_factor(stride: float, scale: float) -> int:
    """s = ceil(stride / scale): the pixel-shuffle factor that takes a feature map ``stride``
    times smaller than the student's clip back to the large clip (``scale`` = student / large,
    per side). The released code's ceil(size(I_large) / size(f)) (tolerating float noise)."""
    if stride <= 0 or not 0 < scale <= 1:
        raise ValueError(f"upsampling_factor: need stride > 0 and 0 < scale <= 1, got {stride}, {scale}")
    return max(1, math.ceil(stride / scale - 1e-6))


class ISRDDecoder(nn.Module):
    """D: 1x1x1 conv (C -> out s^2, no bias) -> per-frame pixel shuffle by s -> PReLU(out)."""

    def __init__(self, in_channels: int, factor: int, out_channels: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or factor < 1 or out_channels < 1:
            raise ValueError(f"ISRDDecoder: need positive sizes, got C={in_channels}, s={factor}, out={out_channels}")
        self.factor = int(factor)
        self.conv = nn.Conv3d(in_channels, out_channels * self.factor**2, kernel_size=1, bias=False)
        self.act = nn.PReLU(out_channels)

    def forward(self, feat: Tensor) -> Tensor:
        return self.act(pixel_shuffle_frames(self.conv(feat), self.factor))


class ISRDLoss(nn.Module):
    """The trainable ISRD term: decoder D (training-only) + :func:`isrd_loss` against the large clip.

    ``forward(feat, target)``: ``feat`` the student's input-module map (B, C, T', H', W'),
    ``target`` the aligned large clip (B, 3, T, H, W) (:func:`isrd_target`). When T' differs from
    T (a stem with a temporal stride) the target's frames are aligned to T' as well.
    """

    def __init__(self, in_channels: int, factor: int, out_channels: int = 3) -> None:
        super().__init__()
        self.decoder = ISRDDecoder(in_channels, factor, out_channels)

    def reconstruct(self, feat: Tensor, height: int, width: int) -> Tensor:
        _check5(feat, "ISRDLoss")
        return match_size(self.decoder(feat), height, width)

    def forward(self, feat: Tensor, target: Tensor) -> Tensor:
        _check5(target, "ISRDLoss target")
        recon = self.reconstruct(feat, target.shape[3], target.shape[4])
        return isrd_loss(recon, align_frames(target, recon.shape[2]))
