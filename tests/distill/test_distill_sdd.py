"""The closed-form phi, the SDB and the L_SD module."""
from __future__ import annotations

import pytest
import torch

from dtkd.distill import (
    ClosedFormPhi,
    FeatureMoments,
    NonLocal3d,
    SqueezeExcite3d,
    StructureDiscrepancyBranch,
    StructureDiscrepancyDistillation,
    align_to_grid,
)


def _linear_teachers(n_batches=4, seed=0, noise=0.0):
    """CNN maps x (5 ch) and ViT maps y = A x + b (+ noise) (7 ch) on a 2x3x3 grid."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, generator=g)
    pairs = []
    for _ in range(n_batches):
        x = torch.randn(4, 5, 2, 3, 3, generator=g)
        y = torch.einsum("dc,bcthw->bdthw", a, x) + b[:, None, None, None]
        pairs.append((x, y + noise * torch.randn(y.shape, generator=g)))
    return pairs


def test_ridge_phi_recovers_a_linear_relation():
    phi = ClosedFormPhi(vit_channels=7, cnn_channels=5, ridge=1e-9)
    moments = FeatureMoments()
    pairs = _linear_teachers()
    for x, y in pairs:
        moments.update(x, y)
    stats = phi.fit(moments)
    assert stats["phi/r2"] == pytest.approx(1.0, abs=1e-6)
    x, y = pairs[0]
    res = phi(y, x)
    assert res.shape == y.shape and res.abs().max() < 1e-3
    assert not res.requires_grad


def test_residual_is_zero_mean_and_orthogonal_to_cnn_features():
    phi = ClosedFormPhi(7, 5, ridge=0.0)
    moments = FeatureMoments()
    pairs = _linear_teachers(noise=1.0)
    for x, y in pairs:
        moments.update(x, y)
    stats = phi.fit(moments)
    assert 0.0 < stats["phi/r2"] < 1.0
    x = torch.cat([p[0] for p in pairs])
    res = phi(torch.cat([p[1] for p in pairs]), x)
    rows_r = res.movedim(1, -1).reshape(-1, 7).double()
    rows_x = x.movedim(1, -1).reshape(-1, 5).double()
    assert rows_r.mean(0).abs().max() < 1e-4  # the intercept is fitted
    cross = (rows_x - rows_x.mean(0)).T @ rows_r / rows_r.shape[0]  # normal equations
    assert cross.abs().max() < 1e-4


def test_standardised_residual_has_unit_rms_on_the_fit_data_whatever_the_feature_scale():
    pairs = _linear_teachers(noise=1.0)
    x = torch.cat([p[0] for p in pairs])
    y = torch.cat([p[1] for p in pairs])
    residuals = {}
    for scale in (1.0, 30.0):  # teachers whose features are 30x larger
        plain, standard = ClosedFormPhi(7, 5, ridge=0.0), ClosedFormPhi(7, 5, ridge=0.0, standardize=True)
        for phi in (plain, standard):
            moments = FeatureMoments()
            for a, b in pairs:
                moments.update(a * scale, b * scale)
            stats = phi.fit(moments)
        res = standard(y * scale, x * scale)
        assert res.double().square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
        # The same target up to the one fitted scalar, which is the raw residual's RMS.
        assert stats["phi/target_scale"] == pytest.approx(stats["phi/residual_variance"] ** 0.5)
        torch.testing.assert_close(res * standard.target_scale, plain(y * scale, x * scale), rtol=1e-4, atol=1e-4)
        residuals[scale] = res
    torch.testing.assert_close(residuals[1.0], residuals[30.0], rtol=1e-3, atol=1e-3)


def test_residual_scale_from_two_folds_is_out_of_sample():
    """Few locations per CNN channel: a fit explains part of its own sample's noise by chance, so
    the in-sample RMS is too small and the standardised target is > 1 on fresh views. Fitted on
    two folds, the scale is extrapolated from the in-sample RMS and the RMS each half's fit leaves
    on the other half; phi is the fit on both. On fresh data the target's RMS is then ~1."""
    def draw(seed, n_batches):  # 40 CNN channels, 1 noise unit: y = A x + b + noise
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(7, 40, generator=torch.Generator().manual_seed(0))
        out = []
        for _ in range(n_batches):
            x = torch.randn(2, 40, 1, 3, 3, generator=g)
            out.append((x, torch.einsum("dc,bcthw->bdthw", a, x) + torch.randn(2, 7, 1, 3, 3, generator=g)))
        return out

    train, fresh = draw(1, 8), draw(2, 200)  # 144 training locations for 40 channels
    folds = [FeatureMoments(), FeatureMoments()]
    for i, (x, y) in enumerate(train):
        folds[i % 2].update(x, y)
    in_sample = ClosedFormPhi(7, 40, ridge=0.0, standardize=True)
    with pytest.warns(UserWarning, match="fitted away by chance"):
        in_sample.fit(folds[0] + folds[1])
    out_of_sample = ClosedFormPhi(7, 40, ridge=0.0, standardize=True)
    with pytest.warns(UserWarning):
        stats = out_of_sample.fit(folds)
    # The same phi (fitted on everything); only the scalar differs, and it is larger.
    torch.testing.assert_close(out_of_sample.cnn_weight, in_sample.cnn_weight)
    assert stats["phi/in_sample_scale"] == pytest.approx(in_sample.target_scale.item())
    assert stats["phi/target_scale"] > 1.3 * stats["phi/in_sample_scale"]

    def rms(phi, pairs):
        return torch.cat([phi(y, x) for x, y in pairs]).double().square().mean().sqrt().item()

    assert rms(in_sample, train) == pytest.approx(1.0, rel=1e-4)
    assert rms(in_sample, fresh) > 1.3  # what an in-sample scale does on views it was not fitted on
    assert rms(out_of_sample, fresh) == pytest.approx(1.0, abs=0.1)
    # Each half's fit on the other half alone over-estimates (half the locations): 0.81 here.
    assert stats["phi/two_fold_scale"] > stats["phi/target_scale"]


def test_mean_square_residual_matches_the_residual_it_describes():
    pairs = _linear_teachers(noise=1.0)
    for pca in (None, 3):
        phi = ClosedFormPhi(7, 5, out_channels=pca, ridge=0.1)
        moments = FeatureMoments()
        for x, y in pairs[:2]:
            moments.update(x, y)
        phi.fit(moments)
        held_out = FeatureMoments()
        for x, y in pairs[2:]:
            held_out.update(x, y)
        direct = torch.cat([phi(y, x) for x, y in pairs[2:]]).double().square().mean().item()
        assert phi._mean_square_residual(held_out) == pytest.approx(direct, rel=1e-4)


def test_standardising_a_fully_explained_residual_leaves_it_unscaled():
    # y = A x + b exactly: the residual is round-off; dividing by its RMS would amplify noise.
    phi = ClosedFormPhi(7, 5, ridge=1e-9, standardize=True)
    moments = FeatureMoments()
    for x, y in _linear_teachers():
        moments.update(x, y)
    assert phi.fit(moments)["phi/target_scale"] == 1.0 and phi.target_scale.item() == 1.0


def test_pca_phi_vit_is_an_orthonormal_projection():
    phi = ClosedFormPhi(7, 5, out_channels=3)
    moments = FeatureMoments()
    for x, y in _linear_teachers(noise=0.5):
        moments.update(x, y)
    stats = phi.fit(moments)
    u = phi.vit_weight.double()
    torch.testing.assert_close(u @ u.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    assert 0.0 < stats["phi/pca_explained_variance"] <= 1.0
    x, y = _linear_teachers(1, seed=3)[0]
    assert phi(y, x).shape == (4, 3, 2, 3, 3)


def test_unfitted_phi_refuses_to_run():
    phi = ClosedFormPhi(7, 5)
    with pytest.raises(RuntimeError, match="prepare"):
        phi(torch.randn(1, 7, 1, 1, 1), torch.randn(1, 5, 1, 1, 1))


def test_nonlocal_starts_as_identity_and_se_keeps_shape():
    x = torch.randn(2, 8, 3, 4, 4)
    nl = NonLocal3d(8)
    assert nl.inner == 4
    torch.testing.assert_close(nl(x), x)
    assert SqueezeExcite3d(32, 16).fc1.out_channels == 2
    assert SqueezeExcite3d(8)(x).shape == x.shape


@pytest.mark.parametrize("variant", ["nl", "se", "nl+se"])
def test_sdb_variants(variant):
    sdb = StructureDiscrepancyBranch(6, 11, variant)
    x = torch.randn(2, 6, 3, 4, 4, requires_grad=True)
    y = sdb(x)
    assert y.shape == (2, 11, 3, 4, 4)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    has_nl = any(isinstance(m, NonLocal3d) for m in sdb.modules())
    has_se = any(isinstance(m, SqueezeExcite3d) for m in sdb.modules())
    assert (has_nl, has_se) == ("nl" in variant, "se" in variant)


def test_sdb_rejects_unknown_variant():
    with pytest.raises(ValueError, match="nl\\+se"):
        StructureDiscrepancyBranch(4, 4, "attention")


def test_sd_module_aligns_grids_and_trains_only_the_student_side():
    sdd = StructureDiscrepancyDistillation(6, 7, 5, variant="nl+se", zeta=0.5, rho=0.5)
    moments = FeatureMoments()
    grid = (2, 3, 3)
    vit = torch.randn(4, 7, 4, 6, 6)  # finer teacher grids are pooled to the student's
    cnn = torch.randn(4, 5, 2, 5, 5)
    sdd.accumulate(moments, vit, cnn, grid)
    sdd.accumulate(moments, vit + 1, cnn * 2, grid)
    sdd.phi.fit(moments)
    student = torch.randn(4, 6, *grid, requires_grad=True)
    loss = sdd(student, vit, cnn)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert student.grad.abs().sum() > 0
    # 1/2 * 1/2 of the locations survive on average (independent random maps).
    assert 0.0 < sdd.mask_fraction.mean() <= 0.5
    assert sum(p.numel() for p in sdd.phi.parameters()) == 0  # phi is fixed: buffers only


def test_align_to_grid_upsamples_and_downsamples():
    f = torch.randn(2, 3, 8, 7, 7)
    assert align_to_grid(f, (13, 5, 5)).shape == (2, 3, 13, 5, 5)
    assert align_to_grid(f, (8, 7, 7)) is f
