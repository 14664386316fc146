"""Small pieces shared by the model families."""
from __future__ import annotations

import importlib
import warnings

import torch
from torch import nn


def pytorchvideo_module(name: str):
    """pytorchvideo.models.<name> (only models: pytorchvideo.transforms is broken on current
    torchvision). Importing it emits a torch.jit deprecation warning we cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"pytorchvideo.models.{name}")


class DropoutLinear(nn.Linear):
    """nn.Linear with dropout on its input. A subclass, not a Sequential, so the state-dict keys
    stay `<head>.weight` / `<head>.bias` and official checkpoints still load."""

    def __init__(self, in_features: int, out_features: int, p: float = 0.0) -> None:
        super().__init__(in_features, out_features)
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(x, self.p, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def pathway_slow(x: torch.Tensor, alpha: int) -> torch.Tensor:
    """Every alpha-th frame of a (B, C, T, H, W) clip, spread uniformly over T."""
    frames = x.shape[2]
    index = torch.linspace(0, frames - 1, frames // alpha, device=x.device).long()
    return x.index_select(2, index)


def check_clip(x: torch.Tensor, name: str) -> None:
    if x.dim() != 5:
        raise ValueError(f"{name} takes one (B, C, T, H, W) tensor, got shape {tuple(x.shape)}")
