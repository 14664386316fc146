"""The zoo by name: every entry builds, its spec is coherent with the built module, and its
parameter count matches the published figure."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dtkd import models
from dtkd.eval.complexity import count_params

PAPER = [n for n in models.list_models() if models.get_spec(n).scale == "paper"]
TINY = [n for n in models.list_models() if models.get_spec(n).scale == "tiny"]
# Building these takes 1-3 s each on one core (weight init of 50-90 M parameters).
BIG = {"swin3d_b", "swin3d_s", "r2plus1d_r34"}


def test_zoo_has_the_contracted_names():
    required = {
        "x3d_xs", "x3d_s", "x3d_m", "x3d_l", "slowfast_r50", "slow_r50", "i3d_r50", "r2plus1d_r50", "csn_r101",
        "mvit_b", "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b", "x3d_tiny", "x3d_tiny_m", "mvit_tiny",
        "slowfast_tiny", "i3d_tiny", "swin3d_tiny",
    }
    assert required <= set(models.list_models())
    assert models.list_models() == sorted(models.list_models())


@pytest.mark.parametrize("name", models.list_models())
def test_spec_fields_are_coherent(name):
    spec = models.get_spec(name)
    assert spec.name == name
    assert spec.family in ("cnn", "vit")
    assert (spec.family == "vit") == (spec.tap_kind == "vit_tokens")
    assert spec.tap_layout in ("ncthw", "pathways", "cls_tokens_thw", "nthwc")
    assert spec.frames > 0 and spec.sampling_rate > 0 and spec.crop_size > 0 and spec.feature_dim > 0
    assert len(spec.mean) == 3 and len(spec.std) == 3 and all(s > 0 for s in spec.std)
    assert spec.input_shape == (3, spec.frames, spec.crop_size, spec.crop_size)
    assert spec.weights_url is None or spec.weights_url.startswith("https://")
    if spec.scale == "paper":
        assert spec.published_params_m is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.frames = 1  # type: ignore[misc]


def _check_built(name: str, model: nn.Module, num_classes: int) -> None:
    spec = models.get_spec(name)
    named = dict(model.named_modules())
    assert spec.tap in named, f"{name}: tap {spec.tap!r} is not a module"
    assert isinstance(named.get(spec.head), nn.Linear), f"{name}: head {spec.head!r} is not an nn.Linear"
    assert named[spec.head].out_features == num_classes
    # Logits, not probabilities: pytorchvideo defaults some heads to softmax.
    assert not any(isinstance(m, nn.Softmax) for m in model.modules())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in PAPER])
def test_paper_model_params_match_published_and_names_resolve(name):
    """400-class params within 2 % of the reference figure (first published entry)."""
    model = models.build(name, 400)
    _check_built(name, model, 400)
    reference = models.get_spec(name).published[0]
    measured = count_params(model) / 1e6
    assert measured == pytest.approx(reference.params_m, rel=0.02), f"{name}: {measured:.3f} M vs {reference}"


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_names_resolve(name):
    _check_built(name, models.build(name, 5), 5)


def test_unknown_name_raises_keyerror_listing_known_names():
    with pytest.raises(KeyError) as err:
        models.build("x3d_huge", 10)
    assert "x3d_huge" in str(err.value) and "x3d_tiny" in str(err.value) and "mvit_v2_s" in str(err.value)
    with pytest.raises(KeyError, match="known: .*swin3d_t"):
        models.get_spec("nope")


def test_unknown_override_is_rejected_with_the_accepted_ones():
    with pytest.raises(TypeError, match="accepted: .*crop_size.*dropout.*frames"):
        models.build("x3d_tiny", 5, widht_factor=2)
    with pytest.raises(TypeError, match="does not accept"):
        models.get_spec("x3d_tiny", colour="red")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_num_classes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="num_classes"):
        models.build("x3d_tiny", bad)


def test_get_spec_applies_input_overrides_and_checks_the_rest():
    spec = models.get_spec("x3d_tiny", frames=16, crop_size=96, sampling_rate=2, dropout=0.1)
    assert (spec.frames, spec.crop_size, spec.sampling_rate) == (16, 96, 2)
    assert models.get_spec("x3d_tiny").frames == 8  # the registry copy is unchanged
    with pytest.raises(ValueError, match="positive int"):
        models.get_spec("x3d_tiny", frames=0)


def test_overrides_change_the_model():
    model = models.build("x3d_tiny", 5, dropout=0.0, depth_factor=2.0)
    base = models.build("x3d_tiny", 5)
    assert count_params(model) > count_params(base)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    small = models.build("mvit_tiny", 5, frames=4, crop_size=32).eval()
    assert small(torch.zeros(1, 3, 4, 32, 32)).shape == (1, 5)


def test_mvit_rejects_a_clip_that_does_not_tile_its_patch_grid():
    with pytest.raises(ValueError, match="frames must be a multiple of 2"):
        models.build("mvit_tiny", 5, frames=7)


def test_pretrained_official_needs_a_url():
    with pytest.raises(ValueError, match="no official weights URL"):
        models.build("x3d_tiny", 5, pretrained="official")


def test_swin_head_dropout_keeps_checkpoint_key_names():
    from dtkd.models.layers import DropoutLinear

    plain, dropped = models.build("swin3d_t", 5), models.build("swin3d_t", 5, dropout=0.3)
    assert isinstance(dropped.head, DropoutLinear) and dropped.head.p == 0.3
    assert list(plain.state_dict()) == list(dropped.state_dict())
    x = torch.randn(2, dropped.head.in_features)
    dropped.head.eval()
    torch.testing.assert_close(dropped.head(x), nn.functional.linear(x, dropped.head.weight, dropped.head.bias))


def test_mvit_tiny_conv_stem_keeps_the_patch_grid_and_the_token_tap():
    """The conv stem replaces MViT's patch embedding with the same total stride: the same token
    grid, the same tap; its convolutions (not one 3x7x7) do the embedding."""
    clip = torch.zeros(2, 3, 8, 32, 32)
    patch = models.build("mvit_tiny", 5, frames=8, crop_size=32).eval()
    conv = models.build("mvit_tiny", 5, frames=8, crop_size=32, stem="conv").eval()
    assert patch.conv_proj(clip).shape == conv.conv_proj(clip).shape == (2, 32, 4, 8, 8)
    strides = [m.stride for m in conv.conv_proj if isinstance(m, nn.Conv3d)]
    assert strides == [(2, 2, 2), (1, 2, 2), (1, 1, 1)]
    assert conv(clip).shape == (2, 5)
    with pytest.raises(ValueError, match="stem must be 'patch' or 'conv', got 'cnn'"):
        models.build("mvit_tiny", 5, stem="cnn")


def test_swin3d_tiny_stems_give_one_grid_and_the_windows_shrink_to_small_grids():
    """Both stems embed 16x32^2 into the same 8x8x8 grid of 32 channels; Swin merges patches in
    space only, so the tap (the final norm, as (B, C, T, H, W)) is 128x8x2x2; an 8-frame clip works
    too (the 4x4x4 windows shrink to the 4-frame grid)."""
    from dtkd.models.taps import FeatureTap

    clip = torch.zeros(2, 3, 16, 32, 32)
    patch = models.build("swin3d_tiny", 5, frames=16, crop_size=32).eval()
    conv = models.build("swin3d_tiny", 5, frames=16, crop_size=32, stem="conv").eval()
    assert patch.patch_embed(clip).shape == conv.patch_embed(clip).shape == (2, 8, 8, 8, 32)
    assert [m.stride for m in conv.patch_embed.proj if isinstance(m, nn.Conv3d)] == [(2, 2, 2), (1, 2, 2), (1, 1, 1)]
    spec = models.get_spec("swin3d_tiny", frames=16, crop_size=32)
    with FeatureTap(conv, spec) as tap:
        assert conv(clip).shape == (2, 5)
        assert tap.features.shape == (2, 128, 8, 2, 2)
    assert conv(torch.zeros(1, 3, 8, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="stem must be 'patch' or 'conv', got 'cnn'"):
        models.build("swin3d_tiny", 5, stem="cnn")
