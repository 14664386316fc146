"""Invariants of the losses and their behaviour on degenerate inputs (no NaN / inf)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dtkd.distill.losses import (
    WEIGHTING_MODES,
    at_loss,
    compute_datw,
    dkd_loss,
    kd_loss,
    mgd_loss,
    quantile_mask,
    random_spatiotemporal_mask,
    rkd_distance_loss,
    sd_loss,
    sr_loss,
    structure_masks,
    teacher_weights,
)

MODES = list(WEIGHTING_MODES)


def finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_weight_rows_sum_to_one(mode, k):
    g = torch.Generator().manual_seed(k)
    zs = torch.randn(16, 7, generator=g)
    teachers = [3 * torch.randn(16, 7, generator=g) for _ in range(k)]
    w = teacher_weights(zs, teachers, tau=4.0, mode=mode)
    assert w.shape == (16, k)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(16), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_student_equal_to_all_teachers_gives_zero_sr(mode):
    z = torch.randn(8, 5) * 3
    loss = sr_loss(z, [z.clone(), z.clone()], tau=4.0, mode=mode)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_fallback_when_scores_vanish():
    z = torch.randn(4, 6)
    terms = compute_datw(z, [z.clone(), 2 * z], tau=2.0, mode="datw")  # D = 0 for both
    assert terms.fallback.all()
    torch.testing.assert_close(terms.weights, torch.full((4, 2), 0.5))


def test_weights_have_no_grad_by_default_and_can_have_one():
    zs = torch.randn(3, 4, requires_grad=True)
    teachers = [torch.randn(3, 4), torch.randn(3, 4)]
    assert not teacher_weights(zs, teachers, 2.0).requires_grad
    w = teacher_weights(zs, teachers, 2.0, grad=True)
    assert w.requires_grad
    w[:, 0].sum().backward()
    assert zs.grad is not None and finite(zs.grad)


@pytest.mark.parametrize("mode", MODES)
def test_zero_logits_are_finite(mode):
    zero = torch.zeros(3, 5, requires_grad=True)
    w = teacher_weights(zero, [torch.zeros(3, 5), torch.zeros(3, 5)], 4.0, mode=mode)
    assert finite(w)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    loss = sr_loss(zero, [torch.zeros(3, 5), torch.randn(3, 5)], 4.0, mode=mode)
    loss.backward()
    assert finite(loss) and finite(zero.grad)


def test_identical_teachers_batch_of_one_and_extreme_logits():
    zs = torch.randn(1, 5, requires_grad=True)
    zt = torch.tensor([[1e4, -1e4, 0.0, 0.0, 0.0]])
    for loss in (
        sr_loss(zs, [zt, zt.clone()], 4.0),
        kd_loss(zs, zt, 4.0),
        dkd_loss(zs, zt, torch.tensor([0]), 1.0, 8.0, 4.0),
        dkd_loss(zs, zt, torch.tensor([1]), 1.0, 8.0, 4.0),
    ):
        loss.backward()
        assert finite(loss) and finite(zs.grad)


def test_rkd_scale_and_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    s, te = torch.randn(6, 8, generator=g), torch.randn(6, 3, generator=g)
    base = rkd_distance_loss(s, te)
    assert base.item() > 0
    for scale_s, scale_t in ((10.0, 1.0), (1.0, 0.01), (3.0, 7.0)):
        torch.testing.assert_close(rkd_distance_loss(scale_s * s, scale_t * te), base, rtol=1e-5, atol=1e-7)
    perm = torch.randperm(6, generator=g)
    torch.testing.assert_close(rkd_distance_loss(s[perm], te[perm]), base, rtol=1e-5, atol=1e-7)


def test_rkd_degenerate_batches():
    s = torch.randn(1, 4, requires_grad=True)
    loss = rkd_distance_loss(s, torch.randn(1, 4))
    assert loss.item() == 0.0
    loss.backward()
    same = torch.ones(4, 3, requires_grad=True)  # all distances zero
    loss = rkd_distance_loss(same, torch.randn(4, 3))
    loss.backward()
    assert finite(loss) and finite(same.grad)


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_quantile_mask_keeps_the_stated_fraction(q):
    score = torch.randn(3, 1, 4, 6, 6)  # 144 distinct values per sample
    m = quantile_mask(score, q)
    kept = m.reshape(3, -1).sum(1)
    expected = 144 - int(q * 144)
    assert kept.tolist() == [expected] * 3


def test_masks_are_per_sample():
    a = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    score = torch.cat([a, 100 + a])  # sample 2 is all above sample 1
    m = quantile_mask(score, 0.5)
    assert m[0].sum() == 4 and m[1].sum() == 4


def test_structure_masks_quantile_zero_reduces_to_the_other_mask():
    res, cnn = torch.randn(2, 3, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    m = structure_masks(res, cnn, zeta=0.0, rho=0.5)
    assert torch.equal(m, quantile_mask(cnn.mean(1, keepdim=True), 0.5))
    # The CNN map is pooled to the residual's grid when they differ.
    assert structure_masks(res, torch.randn(2, 4, 4, 6, 6), 0.5, 0.5).shape == (2, 1, 2, 3, 3)


def test_sd_loss_empty_mask_is_zero_with_graph():
    pred = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    mask = torch.zeros(2, 1, 2, 2, 2, dtype=torch.bool)
    loss = sd_loss(pred, torch.randn(2, 3, 2, 2, 2), mask)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_sd_loss_ignores_non_finite_values_outside_the_mask():
    pred = torch.zeros(1, 2, 1, 1, 2, requires_grad=True)
    res = torch.tensor([1.0, float("nan"), 1.0, float("inf")]).reshape(1, 2, 1, 1, 2)
    mask = torch.tensor([True, False]).reshape(1, 1, 1, 1, 2)
    loss = sd_loss(pred, res, mask)
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and finite(pred.grad)


def test_bf16_inputs_give_finite_float32_losses():
    bf = torch.bfloat16
    zs, zv, zc = (torch.randn(4, 6).to(bf) for _ in range(3))
    f5 = lambda c, t=2, s=3: torch.randn(4, c, t, s, s).to(bf)  # noqa: E731
    losses = [
        teacher_weights(zs, [zv, zc], 4.0),
        sr_loss(zs, [zv, zc], 4.0),
        kd_loss(zs, zv, 4.0),
        dkd_loss(zs, zv, torch.tensor([0, 1, 2, 3]), 1.0, 8.0, 4.0),
        rkd_distance_loss(zs, zv),
        at_loss(f5(3), f5(5, 4, 6)),
        mgd_loss(f5(3), f5(3), nn.Identity()),
        sd_loss(f5(3), f5(3), structure_masks(f5(3), f5(5), 0.5, 0.5)),
    ]
    for x in losses:
        assert x.dtype == torch.float32 and finite(x)


def test_mgd_mask_ratio_and_shape():
    feat = torch.zeros(8, 3, 4, 8, 8)
    m = random_spatiotemporal_mask(feat, 0.25, generator=torch.Generator().manual_seed(0))
    assert m.shape == (8, 1, 4, 8, 8)
    assert abs(1 - m.mean().item() - 0.25) < 0.05


def test_teacher_side_never_gets_gradient():
    zs = torch.randn(4, 5, requires_grad=True)
    zt = torch.randn(4, 5, requires_grad=True)
    fs = torch.randn(4, 3, 2, 2, 2, requires_grad=True)
    ft = torch.randn(4, 3, 2, 2, 2, requires_grad=True)
    total = (
        sr_loss(zs, [zt], 4.0)
        + kd_loss(zs, zt, 4.0)
        + dkd_loss(zs, zt, torch.tensor([0, 1, 2, 3]), 1.0, 8.0, 4.0)
        + rkd_distance_loss(fs.flatten(1), ft.flatten(1))
        + at_loss(fs, ft)
        + mgd_loss(fs, ft, nn.Identity())
        + sd_loss(fs, ft, torch.ones(4, 1, 2, 2, 2, dtype=torch.bool))
    )
    total.backward()
    assert zt.grad is None and ft.grad is None
    assert zs.grad is not None and fs.grad is not None
