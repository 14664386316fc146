"""The model zoo by name: register a factory with its ModelSpec; build / list / describe by name."""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from dtkd.models.spec import ModelSpec
from dtkd.registry import Registry

log = logging.getLogger(__name__)

# Every factory is called as factory(num_classes, frames=..., crop_size=..., dropout=..., **extra);
# `dropout=None` means the architecture's own default head dropout.
Factory = Callable[..., nn.Module]
# Accepted by build()/get_spec() for every model: they change the data view or load weights,
# not the factory's architecture arguments.
_SPEC_ONLY = {"sampling_rate"}
_BUILD_ONLY = {"pretrained"}
# The attribute build() sets on every model: how to build the same architecture again.
RECIPE_ATTR = "dtkd_recipe"


@dataclass(frozen=True)
class _Entry:
    spec: ModelSpec
    factory: Factory

    def options(self) -> set[str]:
        params = inspect.signature(self.factory).parameters
        return {n for n in params if n != "num_classes"} | _SPEC_ONLY | _BUILD_ONLY


MODELS: Registry[_Entry] = Registry("model")


def register_model(spec: ModelSpec) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        MODELS.register(spec.name)(_Entry(spec, factory))
        return factory

    return add


def list_models() -> list[str]:
    return MODELS.names()


def model_options(name: str) -> set[str]:
    """Every override ``build``/``get_spec`` accept for model ``name``."""
    return MODELS.get(name).options()


def _check_overrides(entry: _Entry, overrides: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - entry.options())
    if unknown:
        raise TypeError(
            f"model {entry.spec.name!r} does not accept override(s) {unknown}; "
            f"accepted: {sorted(entry.options())}"
        )


def get_spec(name: str, **overrides: Any) -> ModelSpec:
    """The model's spec; input overrides (frames, sampling_rate, crop_size) are applied, the
    others are only checked, so the same overrides dict can go to build() and get_spec()."""
    entry = MODELS.get(name)
    _check_overrides(entry, overrides)
    return entry.spec.with_input(**{k: overrides.get(k) for k in ("frames", "sampling_rate", "crop_size")})


def build(name: str, num_classes: int, **overrides: Any) -> nn.Module:
    """Build a registered model: ONE (B, C, T, H, W) tensor in, (B, num_classes) logits out.

    Overrides: frames, crop_size (the clip the model is built for), sampling_rate (data only),
    dropout (head dropout), pretrained (local path, URL, or "official" for spec.weights_url; see
    load_weights: a head of another class count is skipped and reported), and the
    architecture options of the model's factory (e.g. width_factor for X3D).

    The model carries its build recipe as ``model.dtkd_recipe`` (:data:`RECIPE_ATTR`, see
    :func:`recipe_of`): ``{"name": ..., "num_classes": ..., "overrides": {"frames": ...,
    "crop_size": ..., <dropout and factory options as given>}}``, JSON values only, so that
    ``build(**recipe)`` makes the same architecture again (frames/crop_size resolved from the spec;
    no ``pretrained``, the weights are the state dict's business; no ``sampling_rate``, data only).
    Saving a model as recipe + state dict (the pipeline's ZenML artifacts) relies on it. Options
    that are not JSON values (a callable, an object) leave the model without a recipe."""
    entry = MODELS.get(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    _check_overrides(entry, overrides)
    overrides = dict(overrides)
    pretrained = overrides.pop("pretrained", None)
    overrides.pop("sampling_rate", None)
    spec = entry.spec.with_input(frames=overrides.pop("frames", None), crop_size=overrides.pop("crop_size", None))
    model = entry.factory(num_classes, frames=spec.frames, crop_size=spec.crop_size, **overrides)
    recipe = _recipe(entry.spec.name, num_classes, {"frames": spec.frames, "crop_size": spec.crop_size, **overrides})
    if recipe is not None:
        setattr(model, RECIPE_ATTR, recipe)
    if pretrained:
        from dtkd.models.weights import load_weights

        if pretrained == "official":
            if spec.weights_url is None:
                raise ValueError(f"model {name!r} has no official weights URL; pass a local file")
            pretrained = spec.weights_url
        report = load_weights(model, pretrained, head=spec.head)
        level = logging.WARNING if (report.missing or report.unexpected) else logging.INFO
        log.log(level, "%s: %s", name, report.summary())
    return model


def _recipe(name: str, num_classes: int, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe as plain JSON values (tuples become lists), or None when an option is no JSON value."""
    try:
        return json.loads(json.dumps({"name": name, "num_classes": num_classes, "overrides": overrides},
                                     allow_nan=False))
    except (TypeError, ValueError):
        log.debug("%s: build options %r are not JSON values; the model carries no recipe", name, overrides)
        return None


def recipe_of(model: Any) -> dict[str, Any] | None:
    """The build recipe of a model made by :func:`build` (a copy; ``build(**recipe)`` rebuilds
    its architecture), or None for any other module."""
    recipe = getattr(model, RECIPE_ATTR, None)
    return json.loads(json.dumps(recipe)) if isinstance(recipe, dict) else None
