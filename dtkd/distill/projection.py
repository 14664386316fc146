"""Closed-form projections phi of Eq. 8 (method notes SDD 3): fixed, never trained.

If phi_ViT and phi_CNN were trained by L_SD, phi -> 0 would zero the residual and the loss.
dtkd fixes them before training:

* phi_ViT: identity (default) or a fixed PCA to ``d`` channels (saves SDB/target memory);
* phi_CNN: the ridge regression from CNN-teacher channels to phi_ViT's channels, fitted once
  on the frozen teachers' training-set features (aligned to the student grid, one sample per
  location).

f_res = phi_ViT(f_ViT) - phi_CNN(f_CNN) is then the part of the ViT's features that the CNN
teacher cannot explain linearly, with zero mean over the training set. With ``standardize`` it is
also divided by its RMS (one scalar, fixed by the fit), so that L_SD does not scale with the
teachers' feature magnitudes (dtkd's deviation; docs/method.md). That RMS is estimated out of
sample when the statistics come in two folds (``fit([fold_a, fold_b])``): a closed-form fit
explains part of its own sample's residual by chance, so an in-sample RMS is too small and
f_res / RMS would be larger on every view phi was not fitted on. phi is fitted on both folds; its
out-of-sample mean square is extrapolated from the in-sample one and the two-fold one (each
half's fit measured on the other half), as least squares predicts (``fit``).
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _rows(feat: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T*H*W, C) float64: one row per location."""
    return feat.detach().movedim(1, -1).reshape(-1, feat.shape[1]).double()


class FeatureMoments:
    """Running sums of x, y, x x^T, x y^T, y y^T over paired locations, in float64."""

    def __init__(self) -> None:
        self.n = 0
        self._t: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self, x_feat: Tensor, y_feat: Tensor) -> None:
        if x_feat.shape[0] != y_feat.shape[0] or x_feat.shape[2:] != y_feat.shape[2:]:
            raise ValueError(
                f"paired features must share batch and grid, got {tuple(x_feat.shape)} and {tuple(y_feat.shape)}"
            )
        x, y = _rows(x_feat), _rows(y_feat)
        add = {"sx": x.sum(0), "sy": y.sum(0), "xx": x.T @ x, "xy": x.T @ y, "yy": y.T @ y}
        for k, v in add.items():
            self._t[k] = self._t[k] + v if k in self._t else v
        self.n += x.shape[0]

    def all_reduce(self) -> None:
        """Sum over DDP ranks so that every rank fits the same phi."""
        if not self._t or not (dist.is_available() and dist.is_initialized()):
            return
        keys = sorted(self._t)
        flat = torch.cat([self._t[k].flatten() for k in keys] + [self._t["sx"].new_tensor([self.n])])
        dist.all_reduce(flat)
        offset = 0
        for k in keys:
            numel = self._t[k].numel()
            self._t[k] = flat[offset : offset + numel].view_as(self._t[k])
            offset += numel
        self.n = int(flat[-1].item())

    def __add__(self, other: "FeatureMoments") -> "FeatureMoments":
        out = FeatureMoments()
        out.n = self.n + other.n
        out._t = {k: self._t[k] + other._t[k] if k in other._t else self._t[k] for k in self._t}
        out._t.update({k: v for k, v in other._t.items() if k not in self._t})
        return out

    def means(self) -> dict[str, Tensor]:
        """Uncentred moments E[x], E[y], E[x x^T], E[x y^T], E[y y^T]."""
        return {k: v / self.n for k, v in self._t.items()}

    def centred(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(mean_x, mean_y, S_xx, S_xy, S_yy): means and (biased) covariances."""
        if self.n < 2:
            raise RuntimeError("phi fitting saw fewer than 2 feature locations")
        n = self.n
        mx, my = self._t["sx"] / n, self._t["sy"] / n
        sxx = self._t["xx"] / n - torch.outer(mx, mx)
        sxy = self._t["xy"] / n - torch.outer(mx, my)
        syy = self._t["yy"] / n - torch.outer(my, my)
        return mx, my, sxx, sxy, syy


class ClosedFormPhi(nn.Module):
    """phi_ViT and phi_CNN as fixed 1x1x1 affine maps (buffers; no parameters)."""

    def __init__(
        self, vit_channels: int, cnn_channels: int, out_channels: int | None = None, ridge: float = 1e-3,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if out_channels is not None and not 0 < out_channels <= vit_channels:
            raise ValueError(f"PCA dimension must be in [1, {vit_channels}], got {out_channels}")
        self.vit_channels, self.cnn_channels = vit_channels, cnn_channels
        self.pca = out_channels is not None
        self.out_channels = out_channels or vit_channels
        self.ridge = ridge
        self.standardize = standardize
        d = self.out_channels
        self.register_buffer("cnn_weight", torch.zeros(d, cnn_channels))
        self.register_buffer("cnn_bias", torch.zeros(d))
        if self.pca:
            self.register_buffer("vit_weight", torch.zeros(d, vit_channels))
            self.register_buffer("vit_bias", torch.zeros(d))
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("target_scale", torch.tensor(1.0))  # f_res is divided by it

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @staticmethod
    def _affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.conv3d(x, weight[:, :, None, None, None], bias)

    def phi_vit(self, vit_feat: Tensor) -> Tensor:
        return self._affine(vit_feat, self.vit_weight, self.vit_bias) if self.pca else vit_feat

    def phi_cnn(self, cnn_feat: Tensor) -> Tensor:
        return self._affine(cnn_feat, self.cnn_weight, self.cnn_bias)

    @torch.no_grad()
    def forward(self, vit_feat: Tensor, cnn_feat: Tensor) -> Tensor:
        """f_res (Eq. 8) from maps already on the same grid; float32, no gradient."""
        if not self.is_fitted:
            raise RuntimeError("phi is not fitted: call Distiller.prepare(loader) before training")
        for feat, c, who in ((vit_feat, self.vit_channels, "ViT"), (cnn_feat, self.cnn_channels, "CNN")):
            if feat.shape[1] != c:
                raise ValueError(f"{who} teacher features have {feat.shape[1]} channels, phi expects {c}")
        # Outside autocast: the target must not be rounded to bf16 before the loss.
        with torch.autocast(device_type=vit_feat.device.type, enabled=False):
            return (self.phi_vit(vit_feat.float()) - self.phi_cnn(cnn_feat.float())) / self.target_scale

    @torch.no_grad()
    def fit(self, moments: FeatureMoments | list[FeatureMoments]) -> dict[str, float]:
        """Fit phi from paired moments (x = CNN teacher, y = ViT teacher); returns fit statistics.

        Ridge: W = (S_xx + lam I)^-1 S_xy U, lam = ridge * trace(S_xx) / C_cnn (scale-free), with
        an intercept (centred data). PCA: U = the top-d eigenvectors of S_yy, sign-fixed so the
        largest entry of each is positive (deterministic across runs and ranks).

        Given two folds, phi is fitted on their sum and the residual scale is the out-of-sample
        RMS (``phi/target_scale``; the in-sample one is ``phi/in_sample_scale``).
        """
        folds = [m for m in moments if m.n >= 2] if isinstance(moments, list) else []
        total = sum(moments[1:], moments[0]) if isinstance(moments, list) else moments
        stats = self._fit(total)
        if self.standardize and len(folds) == 2 and self.target_scale.item() != 1.0:
            saved = {k: v.clone() for k, v in self.state_dict().items()}
            mean_square = 0.0
            with warnings.catch_warnings():  # each half has fewer locations: its warning is expected
                warnings.simplefilter("ignore")
                for fitted_on, tested_on in ((0, 1), (1, 0)):
                    self._fit(folds[fitted_on])
                    mean_square += self._mean_square_residual(folds[tested_on]) / 2
            self.load_state_dict(saved)
            # Mean squares, for least squares with r = regressors / locations (Hastie et al., ESL
            # 7.4): in sample s2(1 - r); a half's fit on the other half s2(1 + 2r); the full fit
            # on new locations s2(1 + r) = (in sample + 2 x two-fold) / 3.
            in_sample = stats["phi/target_scale"] ** 2
            stats["phi/in_sample_scale"], stats["phi/two_fold_scale"] = in_sample ** 0.5, mean_square ** 0.5
            stats["phi/target_scale"] = ((in_sample + 2 * mean_square) / 3) ** 0.5
            self.target_scale.fill_(stats["phi/target_scale"])
        return stats

    def _mean_square_residual(self, moments: FeatureMoments) -> float:
        """E ||phi_ViT(y) - phi_CNN(x)||^2 / d over ``moments``' locations, with phi as fitted now."""
        e = moments.means()
        a = self.vit_weight.double() if self.pca else torch.eye(self.vit_channels, dtype=torch.float64, device=e["sy"].device)
        vb = self.vit_bias.double() if self.pca else torch.zeros(self.out_channels, dtype=torch.float64, device=a.device)
        w, c = self.cnn_weight.double().T, vb - self.cnn_bias.double()  # r = A y - W^T x + c
        square = (torch.trace(a @ e["yy"] @ a.T) + torch.trace(w.T @ e["xx"] @ w) + c @ c
                  - 2 * torch.trace(a.T @ w.T @ e["xy"]) + 2 * c @ (a @ e["sy"]) - 2 * c @ (w.T @ e["sx"]))
        return float(square) / self.out_channels

    def _fit(self, moments: FeatureMoments) -> dict[str, float]:
        mx, my, sxx, sxy, syy = moments.centred()
        stats: dict[str, float] = {"phi/n_locations": float(moments.n)}
        if self.pca:
            evals, evecs = torch.linalg.eigh(syy)  # ascending
            basis = evecs[:, -self.out_channels :].flip(1)  # (D, d), descending variance
            idx = basis.abs().argmax(0)
            basis = basis * basis[idx, torch.arange(basis.shape[1], device=basis.device)].sign()
            kept = evals[-self.out_channels :].sum() / evals.sum().clamp_min(1e-30)
            stats["phi/pca_explained_variance"] = float(kept)
            self.vit_weight.copy_(basis.T.float())
            self.vit_bias.copy_((-my @ basis).float())
            target_mean = torch.zeros(self.out_channels, dtype=torch.float64, device=my.device)
            s_y = basis.T @ syy @ basis
            s_xy = sxy @ basis
        else:
            target_mean, s_y, s_xy = my, syy, sxy
        c = sxx.shape[0]
        if moments.n < 4 * c:
            # Least squares on n rows and c regressors fits away about c/n of the target's
            # variance by chance: the residual target would shrink on the training set.
            warnings.warn(
                f"phi_CNN fitted on {moments.n} feature locations for {c} CNN channels "
                f"(~{min(c / moments.n, 1.0):.0%} of the residual variance is fitted away by chance): "
                "fit on more batches or raise phi_ridge",
                stacklevel=3,
            )
        lam = self.ridge * float(torch.trace(sxx).clamp_min(1e-12)) / c
        eye = torch.eye(c, dtype=sxx.dtype, device=sxx.device)
        try:
            weight = torch.linalg.solve(sxx + lam * eye, s_xy)  # (C_cnn, d)
        except torch.linalg.LinAlgError:  # only reachable with phi_ridge = 0 and collinear channels
            weight = torch.linalg.pinv(sxx) @ s_xy
        self.cnn_weight.copy_(weight.T.float())
        self.cnn_bias.copy_((target_mean - mx @ weight).float())
        self.fitted.fill_(True)
        # Share of phi_ViT's variance the CNN teacher explains linearly (training set).
        total = torch.trace(s_y)
        res = total - 2 * torch.trace(weight.T @ s_xy) + torch.trace(weight.T @ sxx @ weight)
        stats["phi/r2"] = float(1 - res / total.clamp_min(1e-30))
        residual_var = float(res / s_y.shape[0])  # per channel; f_res has zero training-set mean
        stats["phi/residual_variance"] = residual_var
        # A residual at round-off level has nothing to standardise: dividing would amplify noise.
        explained_all = residual_var <= 1e-10 * float(total.clamp_min(1e-30)) / s_y.shape[0]
        scale = residual_var ** 0.5 if self.standardize and not explained_all else 1.0
        self.target_scale.fill_(scale)
        stats["phi/target_scale"] = scale
        return stats

    def extra_repr(self) -> str:
        vit = f"pca->{self.out_channels}" if self.pca else "identity"
        return (f"phi_vit={vit}, phi_cnn=ridge({self.cnn_channels}->{self.out_channels}, ridge={self.ridge}), "
                f"standardize={self.standardize}")
