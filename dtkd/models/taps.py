"""Read a model's last-stage feature map with a forward hook, as one (B, C, T, H, W) tensor for
every family, without editing the model."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dtkd.models.spec import ModelSpec

# Where a wrapper puts the wrapped model's modules: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("", "module.", "_orig_mod.", "module._orig_mod.")


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    for prefix in _WRAPPER_PREFIXES:
        if prefix + name in modules:
            return modules[prefix + name]
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    near = [n for n in modules if n.startswith(parent)][:12] if parent else list(modules)[:12]
    raise KeyError(f"module {name!r} not found in {type(model).__name__}; nearby names: {near}")


def to_grid(output: Any, layout: str, where: str = "tap") -> torch.Tensor:
    """Turn a tapped module's output into (B, C, T, H, W); see ModelSpec.tap_layout."""
    if layout == "ncthw":
        return _check5(output, where)
    if layout == "nthwc":
        return _check5(output, where).permute(0, 4, 1, 2, 3).contiguous()
    if layout == "pathways":
        if not isinstance(output, (list, tuple)) or not output:
            raise TypeError(f"{where}: expected a list of pathway tensors, got {type(output).__name__}")
        paths = [_check5(p, where) for p in output]
        # Average every pathway onto the first (slow) pathway's grid, then stack channels: the
        # global mean of the result is exactly the pooled vector the SlowFast head sees.
        size = paths[0].shape[2:]
        return torch.cat([p if p.shape[2:] == size else F.adaptive_avg_pool3d(p, size) for p in paths], dim=1)
    if layout == "cls_tokens_thw":
        if not (isinstance(output, (list, tuple)) and len(output) == 2):
            raise TypeError(f"{where}: expected (tokens, thw), got {type(output).__name__}")
        tokens, thw = output
        t, h, w = (int(v) for v in thw)
        b, n, c = tokens.shape
        if n == t * h * w + 1:
            tokens = tokens[:, 1:]  # drop the class token
        elif n != t * h * w:
            raise ValueError(f"{where}: {n} tokens do not fit the grid {t}x{h}x{w} (+1 class token)")
        return tokens.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3).contiguous()
    raise ValueError(f"{where}: unknown tap layout {layout!r}")


def _check5(x: Any, where: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{where}: expected a 5-D tensor, got {shape}")
    return x


class FeatureTap:
    """Forward hook on `spec.tap`. After each forward, `.features` is (B, C, T, H, W) with
    C == spec.feature_dim, still attached to the autograd graph unless detach=True.

        with FeatureTap(model, spec) as tap:
            logits = model(clip)
            feats = tap.features          # (B, C, T, H, W)
            vec = tap.pooled()            # (B, C)
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, *, detach: bool = False) -> None:
        self.spec = spec
        self.detach = detach
        self._where = f"{spec.name} tap {spec.tap!r}"
        self._features: Optional[torch.Tensor] = None
        self._handle = find_module(model, spec.tap).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        grid = to_grid(output, self.spec.tap_layout, self._where)
        self._features = grid.detach() if self.detach else grid

    @property
    def features(self) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError(f"{self._where}: no features yet; run a forward pass first")
        return self._features

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.features.shape[2:])  # type: ignore[return-value]

    def pooled(self) -> torch.Tensor:
        """Global average over (T, H, W): (B, C)."""
        return self.features.mean(dim=(2, 3, 4))

    def clear(self) -> None:
        self._features = None

    def remove(self) -> None:
        self._handle.remove()
        self._features = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        shape = None if self._features is None else tuple(self._features.shape)
        return f"FeatureTap({self.spec.name}, tap={self.spec.tap!r}, features={shape})"



class ModuleOutputs:
    """Forward hooks on named modules of a model for one ``with`` block: after a forward,
    ``.outputs[name]`` is that module's output as (B, C, T, H, W) (:func:`to_grid` with ``layout``).
    ``who`` and ``key`` (the caller and the config key that named the modules) lead every error."""

    def __init__(self, model: nn.Module, names: Sequence[str], *, layout: str = "ncthw", who: str = "hook",
                 key: str = "") -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []
        where = f" ({key})" if key else ""
        for name in names:
            try:
                module = find_module(model, name)
            except KeyError as err:
                self.remove()
                raise ValueError(f"{who}: the model has no module {name!r}{where}: {err}") from None
            self._handles.append(module.register_forward_hook(self._hook(name, layout, f"{who} module {name!r}{where}")))

    def _hook(self, name: str, layout: str, where: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = to_grid(output, layout, where)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "ModuleOutputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
