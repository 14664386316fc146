"""FeatureTap gives the last-stage map as (B, C, T, H, W) for every family, in the right order,
and leaves the model as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dtkd import models
from dtkd.models import FeatureTap
from dtkd.models.taps import find_module, to_grid


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _eval(name, **overrides):
    return models.build(name, 5, **overrides).eval(), models.get_spec(name, **overrides)


# One model per tap layout: CNN (ncthw), SlowFast pathways, MViT tokens, Swin channels-last.
FAMILIES = {
    "x3d_tiny": ((2, 3, 8, 64, 64), {}),
    "i3d_tiny": ((2, 3, 8, 64, 64), {}),
    "slowfast_tiny": ((2, 3, 8, 64, 64), {}),
    "mvit_tiny": ((2, 3, 8, 64, 64), {}),
    "swin3d_t": ((2, 3, 4, 64, 64), {"frames": 4, "crop_size": 64}),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_tap_is_5d_with_feature_dim_channels(name):
    shape, overrides = FAMILIES[name]
    model, spec = _eval(name, **overrides)
    with FeatureTap(model, spec) as tap, torch.no_grad():
        model(torch.randn(shape))
        assert tap.features.dim() == 5
        assert tap.features.shape[:2] == (shape[0], spec.feature_dim)
        assert tap.pooled().shape == (shape[0], spec.feature_dim)
        assert tap.grid == tuple(tap.features.shape[2:])


@pytest.mark.parametrize("name", ["i3d_tiny", "slowfast_tiny", "swin3d_t"])
def test_pooled_tap_is_what_the_classifier_sees(name):
    """For heads that are global-average-pool + linear, the tap is exactly the pre-pool map."""
    shape, overrides = FAMILIES[name]
    model, spec = _eval(name, **overrides)
    seen = {}
    head = dict(model.named_modules())[spec.head]

    def grab(module, args):  # returns None: the input is only observed
        seen["x"] = args[0].reshape(-1, head.in_features)

    handle = head.register_forward_pre_hook(grab)
    with FeatureTap(model, spec) as tap, torch.no_grad():
        model(torch.randn(shape))
        pooled = tap.pooled()
    handle.remove()
    # pytorchvideo heads apply the linear per position before averaging; average those rows.
    head_in = seen["x"].reshape(shape[0], -1, head.in_features).mean(1)
    torch.testing.assert_close(pooled, head_in, rtol=1e-4, atol=1e-5)


def test_mvit_tokens_land_on_their_grid_position():
    model, spec = _eval("mvit_tiny")
    raw = {}
    block = dict(model.named_modules())[spec.tap]
    block.register_forward_hook(lambda m, a, out: raw.setdefault("out", out))
    with FeatureTap(model, spec) as tap, torch.no_grad():
        model(torch.randn(2, 3, 8, 64, 64))
        feats = tap.features
    tokens, (t, h, w) = raw["out"]
    assert tokens.shape[1] == 1 + t * h * w  # class token + grid
    assert feats.shape == (2, spec.feature_dim, t, h, w)
    for ti, hi, wi in [(0, 0, 0), (t - 1, 0, w - 1), (1, h - 1, 2), (t - 1, h - 1, w - 1)]:
        torch.testing.assert_close(feats[:, :, ti, hi, wi], tokens[:, 1 + (ti * h + hi) * w + wi])


def test_swin_channels_last_is_permuted_not_reshaped():
    x = torch.randn(2, 3, 4, 5, 6)  # (B, T, H, W, C)
    grid = to_grid(x, "nthwc")
    assert grid.shape == (2, 6, 3, 4, 5)
    torch.testing.assert_close(grid[1, 2, 0, 3, 4], x[1, 0, 3, 4, 2])


def test_pathways_align_on_the_slow_grid_and_keep_the_mean():
    slow, fast = torch.randn(2, 8, 2, 3, 3), torch.randn(2, 4, 8, 3, 3)
    grid = to_grid([slow, fast], "pathways")
    assert grid.shape == (2, 12, 2, 3, 3)
    torch.testing.assert_close(grid.mean((2, 3, 4)), torch.cat([slow.mean((2, 3, 4)), fast.mean((2, 3, 4))], 1))


def test_bad_outputs_raise_clear_errors():
    with pytest.raises(ValueError, match="do not fit the grid 2x2x2"):
        to_grid((torch.randn(1, 7, 4), [2, 2, 2]), "cls_tokens_thw", "m tap")
    with pytest.raises(ValueError, match="expected a 5-D tensor"):
        to_grid(torch.randn(2, 3, 4), "ncthw")
    with pytest.raises(TypeError, match="list of pathway tensors"):
        to_grid(torch.randn(1, 2, 3, 4, 5), "pathways")


def test_features_before_a_forward_is_an_error():
    model, spec = _eval("x3d_tiny")
    tap = FeatureTap(model, spec)
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        _ = tap.features
    tap.remove()


def test_tap_keeps_the_graph_unless_detached():
    model = models.build("x3d_tiny", 5).train()
    spec = models.get_spec("x3d_tiny")
    with FeatureTap(model, spec) as tap:
        model(torch.randn(2, 3, 8, 64, 64))
        assert tap.features.requires_grad
        tap.pooled().sum().backward()
        assert next(model.parameters()).grad is not None
    with FeatureTap(model, spec, detach=True) as tap:
        model(torch.randn(2, 3, 8, 64, 64))
        assert not tap.features.requires_grad


def test_remove_and_context_manager_leave_the_model_untouched():
    model, spec = _eval("mvit_tiny")
    module = find_module(model, spec.tap)
    before = (repr(model), list(model.state_dict()))
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        reference = model(x)
        with FeatureTap(model, spec) as tap:
            assert len(module._forward_hooks) == 1
            torch.testing.assert_close(model(x), reference)  # the hook changes nothing
            assert tap.features is not None
        assert len(module._forward_hooks) == 0
        tap2 = FeatureTap(model, spec)
        tap2.remove()
        model(x)
        with pytest.raises(RuntimeError):
            _ = tap2.features
    assert (repr(model), list(model.state_dict())) == before


def test_tap_finds_its_module_through_a_ddp_style_wrapper():
    class Wrapper(nn.Module):  # same attribute name as DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    model, spec = _eval("x3d_tiny")
    wrapped = Wrapper(model)
    with FeatureTap(wrapped, spec) as tap, torch.no_grad():
        wrapped(torch.randn(1, 3, 8, 64, 64))
        assert tap.features.shape[1] == spec.feature_dim
    with pytest.raises(KeyError, match="not found"):
        find_module(model, "blocks.9.nothing")


def test_tiny_x3d_keeps_a_2x2_grid_at_32px_when_its_last_stage_does_not_stride():
    """At 32^2 X3D's 32x downsampling leaves one location; spatial_strides=(2, 2, 2, 1) leaves 2x2
    (so the spatial parts of SDD, AT and MGD have something to act on), with the same weights."""
    default, spec = _eval("x3d_tiny", crop_size=32)
    grid, _ = _eval("x3d_tiny", crop_size=32, spatial_strides=(2, 2, 2, 1))
    assert default.state_dict().keys() == grid.state_dict().keys()
    x = torch.randn(2, 3, 8, 32, 32)
    for model, hw in ((default, (1, 1)), (grid, (2, 2))):
        with FeatureTap(model, spec) as tap, torch.no_grad():
            assert model(x).shape == (2, 5)
            assert tap.grid[1:] == hw
    with pytest.raises(ValueError, match="spatial_strides"):
        models.build("x3d_tiny", 5, spatial_strides=(2, 2, 3, 1))
