"""The dtkd model zoo: every model by name, one (B, C, T, H, W) clip in, logits out.

    build(name, num_classes, **overrides) -> nn.Module
    list_models() -> list[str]
    model_options(name) -> set[str]   # the overrides build() accepts
    get_spec(name, **overrides) -> ModelSpec
    recipe_of(model) -> dict | None   # what build() was called with: build(**recipe) rebuilds it
    load_weights(model, path_or_url, *, strict=False) -> LoadReport
    FeatureTap(model, spec)   # last-stage feature map as (B, C, T, H, W)
"""
from dtkd.models.registry import build, get_spec, list_models, model_options, recipe_of
from dtkd.models.spec import ModelSpec, Published
from dtkd.models.taps import FeatureTap
from dtkd.models.weights import LoadReport, load_weights, read_state_dict

# Importing the family modules registers their models.
from dtkd.models import movinet, r2plus1d, resnet3d, slowfast, vit, x3d  # noqa: E402,F401  isort: skip

__all__ = [
    "FeatureTap",
    "LoadReport",
    "ModelSpec",
    "Published",
    "build",
    "get_spec",
    "list_models",
    "load_weights",
    "model_options",
    "read_state_dict",
    "recipe_of",
]
