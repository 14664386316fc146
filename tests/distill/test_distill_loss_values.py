"""Every loss against a value computed independently (by hand or with numpy) on small tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dtkd.distill.losses import (
    at_loss,
    dkd_loss,
    kd_loss,
    mgd_loss,
    rkd_distance_loss,
    sd_loss,
    sr_loss,
    structure_masks,
    teacher_weights,
)

ZS = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
ZV = np.array([[3.0, 0.0, -1.0], [0.0, 0.0, 4.0]])
ZC = np.array([[0.5, 1.5, 0.2], [2.0, -1.0, 0.0]])
TAU = 2.0


def t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


def np_confidence(z, tau):
    p = np_softmax(z / tau)
    return 1 - (-(p * np.log(p)).sum(-1)) / math.log(z.shape[-1])


def np_discrepancy(a, b):
    return 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def np_weights(mode, eps=1e-8):
    c = np.stack([np_confidence(ZV, TAU), np_confidence(ZC, TAU)], 1)
    d = np.stack([np_discrepancy(ZS, ZV), np_discrepancy(ZS, ZC)], 1)
    s = {"confidence": c, "discrepancy": d, "datw": c * d}[mode]
    return s / (s.sum(1, keepdims=True) + eps)


@pytest.mark.parametrize("mode", ["confidence", "discrepancy", "datw"])
def test_teacher_weights_match_numpy(mode):
    w = teacher_weights(t(ZS), [t(ZV), t(ZC)], TAU, mode=mode)
    assert w.shape == (2, 2)
    np.testing.assert_allclose(w.numpy(), np_weights(mode), rtol=1e-5, atol=1e-6)


def test_teacher_weights_uniform_is_one_over_k():
    w = teacher_weights(t(ZS), [t(ZV), t(ZC), t(ZC)], TAU, mode="uniform")
    np.testing.assert_allclose(w.numpy(), np.full((2, 3), 1 / 3), atol=1e-7)


def test_confidence_by_hand():
    # Teacher A predicts uniformly (C = 0), teacher B is confident (C > 0): all weight to B.
    zs = t([[0.3, -0.2, 0.1, 0.0]])
    flat = t([[1.0, 1.0, 1.0, 1.0]])
    peaked = t([[20.0, 0.0, 0.0, 0.0]])
    w = teacher_weights(zs, [flat, peaked], tau=1.0, mode="confidence")
    np.testing.assert_allclose(w.numpy(), [[0.0, 1.0]], atol=1e-6)


def test_discrepancy_by_hand():
    # D = 1 - cos: teacher A equals the student (D = 0), teacher B is orthogonal (D = 1).
    zs = t([[1.0, 0.0]])
    w = teacher_weights(zs, [t([[2.0, 0.0]]), t([[0.0, 3.0]])], tau=1.0, mode="discrepancy")
    np.testing.assert_allclose(w.numpy(), [[0.0, 1.0 / (1.0 + 1e-8)]], atol=1e-7)
    # Opposite direction: D = 2 against D = 1 -> weights 2/3, 1/3.
    w = teacher_weights(zs, [t([[-1.0, 0.0]]), t([[0.0, 3.0]])], tau=1.0, mode="discrepancy")
    np.testing.assert_allclose(w.numpy(), [[2 / 3, 1 / 3]], atol=1e-6)


@pytest.mark.parametrize("mode", ["uniform", "confidence", "discrepancy", "datw"])
def test_sr_loss_matches_numpy(mode):
    w = np.full((2, 2), 0.5) if mode == "uniform" else np_weights(mode)
    z_target = w[:, :1] * ZV + w[:, 1:] * ZC  # logits are mixed, not probabilities
    expected = TAU**2 * np_kl(np_softmax(z_target / TAU), np_softmax(ZS / TAU))
    got = sr_loss(t(ZS), [t(ZV), t(ZC)], TAU, mode=mode)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_matches_numpy():
    expected = TAU**2 * np_kl(np_softmax(ZV / TAU), np_softmax(ZS / TAU))
    assert kd_loss(t(ZS), t(ZV), TAU).item() == pytest.approx(expected, rel=1e-5)


def test_dkd_loss_matches_numpy():
    target = np.array([1, 2])
    alpha, beta = 1.5, 0.5
    tckd = nckd = 0.0
    for i, y in enumerate(target):
        ps, pt = np_softmax(ZS[i] / TAU), np_softmax(ZV[i] / TAU)
        bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
        tckd += np.sum(bt * np.log(bt / bs))
        keep = np.arange(3) != y
        qs, qt = np_softmax(ZS[i][keep] / TAU), np_softmax(ZV[i][keep] / TAU)
        nckd += np.sum(qt * np.log(qt / qs))
    expected = TAU**2 * (alpha * tckd + beta * nckd) / 2
    got = dkd_loss(t(ZS), t(ZV), torch.tensor(target), alpha, beta, TAU)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rkd_by_hand():
    # Student points 0, 1, 3 -> pair distances 1, 3, 2 (mean 2) -> 0.5, 1.5, 1.0.
    # Teacher points 0, 2, 4 -> 2, 4, 2 (mean 8/3) -> 0.75, 1.5, 0.75.
    # SmoothL1 (beta 1) of -0.25, 0, 0.25 -> 0.03125, 0, 0.03125; mean 0.0625 / 3.
    s = t([[0.0], [1.0], [3.0]])
    te = t([[0.0], [2.0], [4.0]])
    assert rkd_distance_loss(s, te).item() == pytest.approx(0.0625 / 3, rel=1e-6)


def test_rkd_matches_numpy_with_large_differences():
    rng = np.random.default_rng(0)
    s, te = rng.normal(size=(5, 3)), rng.normal(size=(5, 4)) ** 3
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    ds = np.array([np.linalg.norm(s[i] - s[j]) for i, j in pairs])
    dt = np.array([np.linalg.norm(te[i] - te[j]) for i, j in pairs])
    x = ds / ds.mean() - dt / dt.mean()
    expected = np.mean(np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5))
    assert rkd_distance_loss(t(s), t(te)).item() == pytest.approx(expected, rel=1e-5)


def test_structure_masks_by_hand():
    # One sample, 2 channels, grid 1x2x2. |residual| channel means: [1, 4, 2, 3] -> zeta 0.5 keeps
    # locations 1 and 3. CNN channel means: [5, 1, 0, 4] -> rho 0.5 keeps 0 and 3. Both: 3.
    res = t([[1, -4, 2, 3], [-1, 4, -2, 3]]).reshape(1, 2, 1, 2, 2)
    cnn = t([[6, 1, 0, 4], [4, 1, 0, 4]]).reshape(1, 2, 1, 2, 2)
    m = structure_masks(res, cnn, zeta=0.5, rho=0.5)
    assert m.dtype == torch.bool and m.shape == (1, 1, 1, 2, 2)
    assert m.flatten().tolist() == [False, False, False, True]


def test_sd_loss_by_hand():
    # Mask keeps 2 of 4 locations; 3 channels. Errors there: channel c at loc 0 is c+1, at loc 3
    # is 2 -> squared sum (1 + 4 + 9) + 3 * 4 = 26 over 2 * 3 = 6 masked elements.
    pred = torch.zeros(1, 3, 1, 2, 2)
    res = torch.zeros(1, 3, 1, 2, 2)
    res[0, :, 0, 0, 0] = t([1, 2, 3])
    res[0, :, 0, 1, 1] = 2.0
    res[0, :, 0, 0, 1] = 100.0  # outside the mask: ignored
    mask = torch.tensor([True, False, False, True]).reshape(1, 1, 1, 2, 2)
    assert sd_loss(pred, res, mask).item() == pytest.approx(26 / 6)


def test_at_loss_matches_numpy():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(2, 3, 2, 2, 2))  # student grid 2x2x2
    te = rng.normal(size=(2, 5, 2, 4, 4))  # teacher 2x4x4 -> pooled 2x2 per frame
    a_s = (s**2).mean(1)
    a_t = (te**2).mean(1).reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 average pooling
    def unit(a):
        f = a.reshape(2, 2, -1)
        return f / np.linalg.norm(f, axis=-1, keepdims=True)
    expected = np.mean(((unit(a_s) - unit(a_t)) ** 2).sum(-1))  # summed over H*W, mean over (B, T)
    assert at_loss(t(s), t(te)).item() == pytest.approx(expected, rel=1e-5)


def test_at_loss_does_not_grow_as_the_grid_shrinks():
    # The same two attention patterns at 8x8 and pooled to 2x2: the per-location mean of the
    # authors' code would be 16x larger at 2x2 for a similar distance; the sum over locations is not.
    s = torch.zeros(1, 1, 1, 8, 8)
    s[..., :4, :] = 1.0  # energy in the top half
    te = torch.zeros(1, 1, 1, 8, 8)
    te[..., :, :4] = 1.0  # energy in the left half
    big = at_loss(s, te).item()
    small = at_loss(F.avg_pool3d(s, (1, 4, 4)), F.avg_pool3d(te, (1, 4, 4))).item()
    # hand-computed: unit maps share a quarter of their mass; |q_s - q_t|^2 = 2 - 2 * cos = 2 - 2 * 0.5 = 1
    assert big == pytest.approx(1.0, rel=1e-5)
    assert small == pytest.approx(1.0, rel=1e-5)


def test_mgd_loss_with_given_mask_matches_numpy():
    rng = np.random.default_rng(2)
    s, te = rng.normal(size=(2, 4, 2, 3, 3)), rng.normal(size=(2, 4, 2, 3, 3))
    mask = (rng.random(size=(2, 1, 2, 3, 3)) > 0.5).astype(np.float64)
    expected = np.sum((s * mask - te) ** 2) / 2  # identity generator: sum / batch size
    got = mgd_loss(t(s), t(te), nn.Identity(), mask=t(mask))
    assert got.item() == pytest.approx(expected, rel=1e-5)
