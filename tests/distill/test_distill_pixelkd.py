"""Pixel distillation (method ``pixelkd``): the ISRD pieces against hand-computed values, their
invariants, the config and method refusals, and a short run on the real tiny models (x3d_tiny
student on 32^2 clips, teachers on 64^2) that validates the student at its low resolution."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from distill_helpers import TinyCNN, ToyTap, cnn_spec, make_setup, tiny_zoo, zoo_distiller
from dtkd.distill import DISTILLERS, DistillConfig, build_distiller
from dtkd.distill.losses.kd import kd_loss
from dtkd.distill.losses.pixelkd import (
    ISRDDecoder,
    ISRDLoss,
    align_frames,
    isrd_loss,
    isrd_target,
    match_size,
    pixel_shuffle_frames,
    renormalize,
    upsampling_factor,
)

pytestmark = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")  # pytorchvideo


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B T, C, H, W)."""
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1)


def shrink(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """A clip resized per frame by ``scale`` in H and W (what a smaller crop_size renders)."""
    b, c, t, h, w = x.shape
    small = F.interpolate(_frames(x), scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    return small.view(b, t, c, *small.shape[-2:]).permute(0, 2, 1, 3, 4).contiguous()


# ----- the loss pieces, by hand ----------------------------------------------------------------
def test_pixel_shuffle_by_hand_and_as_nn_pixelshuffle_per_frame():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1, 1)  # channels (i, j) = (0,0) (0,1) (1,0) (1,1)
    assert pixel_shuffle_frames(x, 2).view(2, 2).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    y = torch.randn(2, 3 * 9, 4, 2, 3)
    out = pixel_shuffle_frames(y, 3)
    assert out.shape == (2, 3, 4, 6, 9)
    torch.testing.assert_close(_frames(out), nn.PixelShuffle(3)(_frames(y)))  # frames never mix
    with pytest.raises(ValueError, match="multiple of s"):
        pixel_shuffle_frames(torch.randn(1, 5, 1, 1, 1), 2)


@pytest.mark.parametrize("t, frames, picked", [(4, 4, [0, 1, 2, 3]), (4, 2, [0, 2]), (3, 2, [0, 2]),
                                               (2, 4, [0, 1, 1, 1]), (8, 4, [0, 2, 4, 6])])
def test_align_frames_picks_the_nearest_frame_in_time(t, frames, picked):
    x = torch.arange(t, dtype=torch.float32).view(1, 1, t, 1, 1)
    assert align_frames(x, frames).flatten().tolist() == [float(i) for i in picked]


def test_renormalize_by_hand():
    x = torch.ones(1, 3, 1, 1, 1)
    # raw = 1 * 0.5 + 0.2 = 0.7; (0.7 - 0.5) / 0.1 = 2.
    out = renormalize(x, (0.2,) * 3, (0.5,) * 3, (0.5,) * 3, (0.1,) * 3)
    torch.testing.assert_close(out, torch.full_like(x, 2.0))
    assert renormalize(x, (0.45,) * 3, (0.225,) * 3, (0.45,) * 3, (0.225,) * 3) is x


def test_isrd_loss_by_hand_is_the_mean_absolute_error():
    recon = torch.tensor([1.0, -2.0, 3.0, 0.5]).view(1, 1, 1, 2, 2)
    target = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 1, 2, 2)
    assert isrd_loss(recon, target).item() == pytest.approx((1 + 2 + 2 + 0.5) / 4)
    with pytest.raises(ValueError, match="differ"):
        isrd_loss(recon, target[..., :1])


def test_decoder_by_hand_conv_shuffle_prelu():
    dec = ISRDDecoder(1, 2, out_channels=1)
    with torch.no_grad():
        dec.conv.weight.copy_(torch.tensor([1.0, -2.0, 3.0, -4.0]).view(4, 1, 1, 1, 1))
    assert dec.act.weight.item() == 0.25  # PReLU's initial slope
    out = dec(torch.ones(1, 1, 1, 1, 1))
    assert out.view(2, 2).tolist() == [[1.0, -0.5], [3.0, -1.0]]


def test_isrd_module_crops_resizes_and_aligns_time_by_hand():
    loss = ISRDLoss(1, 2, out_channels=1)
    with torch.no_grad():
        loss.decoder.conv.weight.fill_(1.0)  # every sub-pixel = the feature value
    feat = torch.tensor([2.0, 3.0]).view(1, 1, 2, 1, 1)  # 2 frames of 1x1 -> 2x2 of 2s, 2x2 of 3s
    target = torch.zeros(1, 1, 4, 2, 2)
    target[:, :, 2] = 3.0  # frames 0 and 2 are picked for the 2 reconstructed frames: |2 - 0| and |3 - 3|
    assert loss(feat, target).item() == pytest.approx(1.0)
    cropped = match_size(torch.arange(9.0).view(1, 1, 1, 3, 3), 2, 2)
    assert cropped.flatten().tolist() == [0.0, 1.0, 3.0, 4.0]  # the code's top-left crop
    assert match_size(torch.ones(1, 1, 2, 2, 2), 3, 3).shape == (1, 1, 2, 3, 3)


@pytest.mark.parametrize("stride, scale, s", [(2, 0.5, 4), (2, 1.0, 2), (4, 0.25, 16), (2, 0.4, 5), (3, 0.5, 6)])
def test_upsampling_factor(stride, scale, s):
    assert upsampling_factor(stride, scale) == s


def test_isrd_target_aligns_then_renormalises_without_gradient():
    large = torch.ones(1, 3, 4, 2, 2, requires_grad=True)
    out = isrd_target(large, 2, ((0.2,) * 3, (0.5,) * 3), ((0.5,) * 3, (0.1,) * 3))
    assert out.shape == (1, 3, 2, 2, 2) and not out.requires_grad
    torch.testing.assert_close(out, torch.full_like(out, 2.0))


def test_gradients_reach_the_decoder_and_feature_not_the_target_and_compute_in_float32():
    loss = ISRDLoss(4, 2)
    feat = torch.randn(2, 4, 3, 2, 2, requires_grad=True)
    target = torch.randn(2, 3, 3, 4, 4, requires_grad=True)
    value = loss(feat, target)
    assert value.dtype == torch.float32
    value.backward()
    assert target.grad is None and feat.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss.parameters())
    low = isrd_loss(torch.randn(1, 3, 1, 2, 2).bfloat16(), torch.randn(1, 3, 1, 2, 2).bfloat16())
    assert low.dtype == torch.float32


# ----- registration and config -----------------------------------------------------------------
def test_pixelkd_is_registered_with_its_defaults():
    assert "pixelkd" in DISTILLERS.names()
    c = DistillConfig(method="pixelkd")
    assert (c.pixelkd_scale, c.pixelkd_kd_weight, c.pixelkd_isrd_weight) == (0.5, 1.0, 10.0)
    assert c.pixelkd_stage is None and c.pixelkd_hr_view is None


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"pixelkd_scale": 0.0}, "greater than 0"),
        ({"pixelkd_scale": 1.5}, "less than or equal to 1"),
        ({"pixelkd_isrd_weight": -1.0}, "greater than or equal to 0"),
        ({"pixelkd_stage": " "}, "non-empty name"),
        ({"pixelkd_hr_view": ""}, "non-empty name"),
    ],
)
def test_bad_configs_are_refused_clearly(cfg, message):
    with pytest.raises(ValidationError, match=message):
        DistillConfig(method="pixelkd", **cfg)


# ----- the distiller on the generic tiny CNN ---------------------------------------------------
def _generic(**cfg):
    student, _, refs = make_setup()
    spec = SimpleNamespace(**vars(cnn_spec("tiny_cnn", 6)), input_shape=(3, 4, 16, 16))
    return build_distiller(DistillConfig(method="pixelkd", **cfg), student, spec, refs, tap_factory=ToyTap)


def test_generic_cnn_student_needs_a_stage_and_a_real_module():
    student, _, refs = make_setup()
    spec = SimpleNamespace(**vars(cnn_spec("tiny_cnn", 6)), input_shape=(3, 4, 16, 16))
    with pytest.raises(ValueError, match="no default input module for student 'tiny_cnn'.*pixelkd_stage"):
        build_distiller(DistillConfig(method="pixelkd"), student, spec, refs, tap_factory=ToyTap)
    with pytest.raises(ValueError, match="no module 'layer9'"):
        _generic(pixelkd_stage="layer9")
    with pytest.raises(ValueError, match="cannot be the student's own view"):
        _generic(pixelkd_stage="stem", pixelkd_hr_view="student")
    with pytest.raises(ValueError, match="input_shape"):
        build_distiller(DistillConfig(method="pixelkd", pixelkd_stage="stem"), student, cnn_spec("tiny_cnn", 6), refs,
                        tap_factory=ToyTap)


def test_generic_student_trains_the_decoder_from_the_large_view_and_teacher_gets_no_gradient():
    d = _generic(pixelkd_stage="stem").train()
    assert d.factor == 2 and d.hr_view == "vit"  # stem stride 1, scale 0.5
    g = torch.Generator().manual_seed(0)
    large = torch.randn(2, 3, 8, 24, 24, generator=g)
    inputs = {"student": shrink(large)[:, :, ::2], "vit": large}  # 4 frames of 12^2; the teacher 8 of 24^2
    out = d(inputs, torch.tensor([0, 3]))
    assert set(out.losses) == {"ce", "kd", "isrd"}
    stem = d.student.stem[0].weight
    (g_isrd,) = torch.autograd.grad(out.loss - out.losses["ce"] - out.losses["kd"], stem, retain_graph=True)
    assert g_isrd.abs().sum() > 0  # the ISRD term alone reaches the student's input module
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.isrd.parameters())
    assert all(p.grad is None for p in d.teachers.parameters())
    assert d.student.state_dict().keys() == TinyCNN(5, width=6).state_dict().keys()
    assert not any(m._forward_hooks for m in d.student.modules())


def test_total_is_ce_plus_weighted_kd_and_isrd():
    d = _generic(pixelkd_stage="stem", pixelkd_kd_weight=2.0, pixelkd_isrd_weight=3.0).eval()
    large = torch.randn(2, 3, 4, 24, 24, generator=torch.Generator().manual_seed(3))
    inputs = {"student": shrink(large), "vit": large}
    y = torch.tensor([1, 2])
    out = d(inputs, y)
    with torch.no_grad():
        z_t = d.teachers["vit"](large)
    torch.testing.assert_close(out.losses["kd"], kd_loss(out.logits, z_t, d.cfg.tau).detach())
    expected = out.losses["ce"] + 2.0 * out.losses["kd"] + 3.0 * out.losses["isrd"]
    torch.testing.assert_close(out.loss.detach(), expected)
    no_isrd = _generic(pixelkd_stage="stem", pixelkd_isrd_weight=0.0)
    assert set(no_isrd(inputs, y).losses) == {"ce", "kd"}


def test_a_student_view_at_the_large_size_is_refused_with_the_crop_to_set():
    d = _generic(pixelkd_stage="stem")
    large = torch.randn(2, 3, 4, 24, 24)
    with pytest.raises(ValueError, match="set the student's crop_size to 12"):
        d({"student": large, "vit": large}, torch.tensor([0, 1]))
    with pytest.raises(KeyError, match="no large view 'vit'"):
        d({"student": shrink(large)}, torch.tensor([0, 1]))


def test_setup_with_cached_teachers_still_renders_the_large_view(monkeypatch):
    from dtkd.distill import distiller as base
    from dtkd.engine.contract import TrainPlan

    class Views:
        def __init__(self, names=("student", "vit", "cnn")):
            self.names = list(names)

        def with_views(self, names):
            return Views(names)

    def fake_cached_plan(module, data, ctx, num_views, cache=None):
        return TrainPlan(data=data.with_views(["student"]), num_views=num_views, extras=lambda batch: {})

    monkeypatch.setattr(base, "cached_plan", fake_cached_plan)
    d = _generic(pixelkd_stage="stem", teacher_cache_views=2)
    plan = d.setup(Views(), SimpleNamespace(resumed=False))
    assert plan.data.names == ["student", "vit"] and plan.num_views == 2


# ----- the real tiny models --------------------------------------------------------------------
models = pytest.importorskip("dtkd.models")
N = 5


@pytest.fixture(scope="module")
def zoo():
    student, spec, refs, (batch,) = tiny_zoo(N, 1)
    return student, spec, refs, batch


def make(zoo, **cfg):
    return zoo_distiller(zoo, "pixelkd", N, **cfg)


def test_x3d_student_default_input_module_and_training_only_decoder(zoo):
    d = make(zoo)
    assert d.stage_name == "blocks.0.conv" and d.hr_view == "vit"
    assert d.factor == 4  # stem stride 2 at half the teacher's size: 16^2 maps -> 64^2 clips
    assert d.isrd.decoder.conv.in_channels == 16 and d.isrd.decoder.conv.out_channels == 48
    assert d.student.state_dict().keys() == models.build("x3d_tiny", N).state_dict().keys()
    assert not any("isrd" in k for k in d.student.state_dict())
    state = d.training_state_dict()
    assert any(k.startswith("isrd.") for k in state) and not any(k.startswith("teachers.") for k in state)
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in trainable for p in d.isrd.parameters())
    assert d.active_teachers == ["vit"] and not d.needs_student_features


def test_x3d_cnn_teacher_and_cached_outputs_match_live(zoo):
    d = make(zoo, baseline_teacher="cnn").eval()
    x = zoo[3]
    inputs = {"student": shrink(x["student"]), "cnn": x["cnn"]}
    y = torch.tensor([2, 0, 3])
    cache = d.teacher_forward(inputs)
    assert set(cache) == {"cnn"} and d.hr_view == "cnn"
    live = d(inputs, y)
    cached = d(inputs, y, teacher_outputs=cache)
    torch.testing.assert_close(cached.loss, live.loss)
    assert math.isfinite(float(live.losses["isrd"]))


class LowResClips(torch.utils.data.Dataset):
    """``n`` random 8x64^2 clips for the teachers and the same clips at 32^2 for the student."""

    def __init__(self, n: int, num_classes: int) -> None:
        g = torch.Generator().manual_seed(2)
        self.large = torch.randn(n, 3, 8, 64, 64, generator=g)
        self.small = shrink(self.large)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.large)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": {"student": self.small[i], "vit": self.large[i], "cnn": self.large[i]},
                "label": i % self.num_classes, "index": i}


def test_one_epoch_of_pixelkd_with_the_trainer_validates_at_the_low_resolution(zoo, tmp_path):
    from dtkd.engine import History, Trainer, TrainConfig
    from dtkd.engine.sampling import SeededViews
    from dtkd.eval import evaluate

    d = make(zoo)
    before = {k: v.clone() for k, v in d.isrd.state_dict().items()}
    data = LowResClips(6, N)
    val = torch.utils.data.DataLoader(data, batch_size=3)
    result = Trainer(d, TrainConfig(epochs=1, batch_size=3), progress=False, checkpoint_dir=tmp_path,
                     callbacks=[History()]).fit(SeededViews(data), val)
    first = result.history[0]
    terms = {k for k in first if k.startswith("train_loss/")}
    assert {"train_loss/ce", "train_loss/kd", "train_loss/isrd"} <= terms
    assert all(math.isfinite(first[k]) for k in terms) and math.isfinite(first["val_top1"])
    assert any(not torch.equal(before[k], v) for k, v in d.isrd.state_dict().items())  # the decoder learned
    # The deployed student is the plain model on the student's (32^2) view: the test protocol as is.
    plain = models.build("x3d_tiny", N)
    plain.load_state_dict(d.student.state_dict())
    res = evaluate(plain, val, num_classes=N)
    assert res.n == 6 and res.loss == pytest.approx(first["val_loss"], rel=1e-4)
