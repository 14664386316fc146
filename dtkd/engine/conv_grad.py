"""Faster 3-D convolution gradients on CPU.

On CPU, PyTorch's backward of the small depthwise and pointwise ``Conv3d`` layers that X3D-style
students are made of takes 10-60x longer than their forward: for a depthwise 3x3x3 layer on an
8x216x8x2x2 map (channels_last_3d, 1 thread) the forward takes 0.14 ms and the input gradient
6.9 ms (``bench/conv_grad.py``). The input gradient of a convolution is itself a convolution
(of the output gradient, zero-dilated by the stride, with the kernel flipped and its in/out
channels swapped per group), so it can be computed by the fast forward kernel. This module does
that for the input gradient and keeps PyTorch's own kernel for the weight gradient.

The forward is ``F.conv3d`` with the same arguments, so outputs are bit-identical; gradients agree
to float rounding (not bitwise: the sums run in another order). Layers this does not cover
(dilation, non-zero padding modes, string padding, padding >= kernel), CPU autocast and other devices
keep PyTorch's path.
``use_fast_conv_grad(model)`` turns it on for every ``nn.Conv3d`` of a model, keeping parameters,
buffers, hooks and state-dict keys; ``restore_conv_grad`` undoes it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def transposed_kernel(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel whose forward convolution is the input gradient of ``weight``'s (stride 1):
    in/out channels swapped within each group, every spatial axis flipped.
    (C_out, C_in/g, k...) -> (C_in, C_out/g, k...)."""
    c_out, c_in_g, *k = weight.shape
    w = weight.reshape(groups, c_out // groups, c_in_g, *k).transpose(1, 2)
    return w.reshape(groups * c_in_g, c_out // groups, *k).flip(dims=tuple(range(2, 2 + len(k))))


def input_grad(grad_out: torch.Tensor, weight: torch.Tensor, input_shape: Sequence[int],
               stride: Sequence[int], padding: Sequence[int], groups: int) -> torch.Tensor:
    """d(conv3d(x, weight))/dx applied to ``grad_out``, as one forward convolution.

    With stride s the output gradient is first spread onto a zero grid (every s-th position),
    of length L + 2p - k + 1 per axis (what the forward convolved over, less the kernel), so that
    a full correlation with the flipped kernel (padding k - 1 - p) lands exactly on the input's L.
    """
    k = weight.shape[2:]
    if any(s > 1 for s in stride):
        size = [n + 2 * p - kk + 1 for n, p, kk in zip(input_shape[2:], padding, k)]
        fmt = torch.channels_last_3d if grad_out.is_contiguous(memory_format=torch.channels_last_3d) \
            and not grad_out.is_contiguous() else torch.contiguous_format
        spread = grad_out.new_zeros((*grad_out.shape[:2], *size)).contiguous(memory_format=fmt)
        spread[:, :, ::stride[0], ::stride[1], ::stride[2]] = grad_out
        grad_out = spread
    pad = tuple(kk - 1 - p for kk, p in zip(k, padding))
    return F.conv3d(grad_out, transposed_kernel(weight, groups), None, 1, pad, 1, groups)


class _Conv3dFastGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):  # noqa: D401 - autograd API
        ctx.save_for_backward(x, weight)
        ctx.conf = (tuple(stride), tuple(padding), groups, bias is not None)
        return F.conv3d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, groups, has_bias = ctx.conf
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = input_grad(grad_out, weight, x.shape, stride, padding, groups)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, stride, padding, (1, 1, 1), False, (0, 0, 0), groups,
                (False, True, False))[1]
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum(dim=(0, 2, 3, 4))
        return gx, gw, gb, None, None, None


def covered(conv: nn.Conv3d) -> bool:
    """Whether the fast gradient applies to this layer (otherwise PyTorch's own path runs)."""
    return (conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and all(d == 1 for d in conv.dilation)
            and all(p <= k - 1 for p, k in zip(conv.padding, conv.kernel_size)))


class FastGradConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose input gradient is computed by a forward convolution (module doc)."""

    def _conv_forward(self, input, weight, bias):
        if (not torch.is_grad_enabled() or not covered(self) or input.device.type != "cpu"
                or torch.is_autocast_enabled("cpu")):  # autocast casts inside; keep its own path
            return super()._conv_forward(input, weight, bias)
        return _Conv3dFastGrad.apply(input, weight, bias, self.stride, self.padding, self.groups)


def use_fast_conv_grad(model: nn.Module) -> int:
    """Switch every plain ``nn.Conv3d`` of ``model`` to :class:`FastGradConv3d` in place (same
    parameters, buffers, hooks and state-dict keys). Returns how many layers were switched."""
    n = 0
    for module in model.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = FastGradConv3d
            n += 1
    return n


def restore_conv_grad(model: nn.Module) -> None:
    """Undo :func:`use_fast_conv_grad`."""
    for module in model.modules():
        if type(module) is FastGradConv3d:
            module.__class__ = nn.Conv3d
