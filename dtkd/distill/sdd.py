"""Structure Discrepancy-aware Distillation (paper §3.4, Eq. 8-12) as one training-only module."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .diagnostics import MeanMeter
from .features import align_to_grid, check_5d
from .losses.sd import sd_loss, structure_masks
from .projection import ClosedFormPhi, FeatureMoments
from .sdb import StructureDiscrepancyBranch


class StructureDiscrepancyDistillation(nn.Module):
    """L_SD = masked MSE(g_SDB(f_S), phi_ViT(f_ViT) - phi_CNN(f_CNN)).

    Holds the fixed phi (buffers) and the SDB (the only trainable part). Both teacher maps
    are pooled to the student's grid (method notes SDD 2), the residual and the masks are
    computed without gradient, and the student map keeps its graph so L_SD trains the
    student backbone through the SDB.
    """

    def __init__(
        self,
        student_channels: int,
        vit_channels: int,
        cnn_channels: int,
        *,
        variant: str = "nl+se",
        zeta: float = 0.5,
        rho: float = 0.5,
        phi_dim: int | None = None,
        ridge: float = 1e-3,
        se_reduction: int = 16,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.zeta, self.rho = zeta, rho
        self.phi = ClosedFormPhi(vit_channels, cnn_channels, phi_dim, ridge, standardize)
        self.sdb = StructureDiscrepancyBranch(student_channels, self.phi.out_channels, variant, se_reduction)
        self.mask_fraction = MeanMeter()

    @staticmethod
    def aligned(vit_feat: Tensor, cnn_feat: Tensor, grid) -> tuple[Tensor, Tensor]:
        check_5d(vit_feat, "ViT teacher features")
        check_5d(cnn_feat, "CNN teacher features")
        return align_to_grid(vit_feat.detach().float(), grid), align_to_grid(cnn_feat.detach().float(), grid)

    @torch.no_grad()
    def accumulate(self, moments: FeatureMoments, vit_feat: Tensor, cnn_feat: Tensor, grid) -> None:
        """Add one batch of teacher features (on the student grid) to the phi statistics."""
        vit, cnn = self.aligned(vit_feat, cnn_feat, grid)
        moments.update(cnn, vit)

    def forward(self, student_feat: Tensor, vit_feat: Tensor, cnn_feat: Tensor) -> Tensor:
        check_5d(student_feat, "student features")
        with torch.no_grad():
            vit, cnn = self.aligned(vit_feat, cnn_feat, student_feat.shape[2:])
            residual = self.phi(vit, cnn)
            mask = structure_masks(residual, cnn, self.zeta, self.rho)
        if self.training:
            self.mask_fraction.update(mask.float().mean())
        return sd_loss(self.sdb(student_feat), residual, mask)
