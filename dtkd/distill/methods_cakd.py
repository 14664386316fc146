"""The registered ``cakd`` baseline: cross-architecture KD (Liu et al. 2022, ACCV).

CE + cakd_pca_weight * L_PCA + cakd_gl_weight * L_GL on the last-stage maps of the student and
of one teacher (``cfg.baseline_teacher``, the ViT by default: CAKD's CNN-student, transformer-
teacher setting). The PCA and GL projectors are training-only (``distiller.cakd``); the student
stays a plain student. The paper's multi-view robust training (its discriminator) is left out.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from .distiller import TeacherOutputs, feature_channels
from .losses.cakd import CAKDLoss
from .methods import Terms, _SingleTeacher
from .registry import DISTILLERS


@DISTILLERS.register("cakd")
class CAKD(_SingleTeacher):
    """CAKD: CE + cakd_pca_weight * L_PCA + cakd_gl_weight * L_GL (a weight of 0 drops that term
    and its projector; both 0 is refused: that is the ``none`` baseline)."""

    name = "cakd"
    uses_features = True
    supports_heads = True  # feature-level: shared by the heads

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Distiller's arguments
        super().__init__(*args, **kwargs)
        c = self.cfg
        if c.cakd_pca_weight == 0 and c.cakd_gl_weight == 0:
            raise ValueError(
                "method 'cakd': cakd_pca_weight and cakd_gl_weight are both 0, so nothing is distilled; "
                "set one > 0 (or use method 'none')"
            )
        self.cakd = CAKDLoss(
            feature_channels(self.student_spec, "student"),
            feature_channels(self.teacher_specs[self.teacher_name], f"teacher {self.teacher_name!r}"),
            c.cakd_replace_prob,
            c.cakd_kernel,
            c.cakd_gl_groups,
            use_pca=c.cakd_pca_weight > 0,
            use_gl=c.cakd_gl_weight > 0,
        )

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        values = self.cakd(features, teachers[self.teacher_name]["features"])
        weights = {"pca": self.cfg.cakd_pca_weight, "gl": self.cfg.cakd_gl_weight}
        return {f"cakd_{k}": (weights[k], v) for k, v in values.items()}
