"""The registered distillation methods: none, kd, dkd, at, mgd, rkd, dtkd.

Baselines use one teacher, the ViT by default (``baseline_teacher``); DT-KD uses every
teacher for L_SR (any K >= 1) and the ViT and CNN teachers for L_SD, the ViT for L_RKD.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Optional

import torch
from torch import Tensor

from dtkd.data.views import STUDENT_VIEW

from .distiller import Distiller, TeacherOutputs, feature_channels, unpack_batch
from .features import global_pool
from .losses import DKDLoss, MGDLoss, SRLoss, at_loss, kd_loss, rkd_distance_loss
from .projection import FeatureMoments
from .registry import DISTILLERS
from .sdd import StructureDiscrepancyDistillation

Terms = dict[str, tuple[float, Tensor]]


@DISTILLERS.register("none")
class PlainTraining(Distiller):
    """Cross-entropy only: teacher fine-tuning and the undistilled baseline."""

    name = "none"
    supports_heads = True


class _SingleTeacher(Distiller):
    """A baseline that learns from one teacher, chosen by role (``cfg.baseline_teacher``)."""

    uses_features = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Distiller's arguments
        super().__init__(*args, **kwargs)
        self.teacher_name = self.teacher_with_role(self.cfg.baseline_teacher)
        self._use_teachers([self.teacher_name], features=self.uses_features)
        self.needs_student_features = self.uses_features


@DISTILLERS.register("kd")
class KD(_SingleTeacher):
    """Hinton KD: CE + alpha * kd_loss (with heads: summed over heads)."""

    name = "kd"
    supports_heads = True

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        kd = self.logit_term(_kd_first, logits, [teachers[self.teacher_name]["logits"]], self.cfg.tau)
        return {"kd": (self.cfg.alpha, kd)}


def _kd_first(student: Tensor, teachers: list[Tensor], tau: float) -> Tensor:
    return kd_loss(student, teachers[0], tau)


@DISTILLERS.register("dkd")
class DKD(_SingleTeacher):
    """Decoupled KD: CE + warm-up(epoch) * (dkd_alpha * TCKD + dkd_beta * NCKD) (with heads:
    summed over heads, each with its own target class)."""

    name = "dkd"
    supports_heads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.cfg
        self.dkd = DKDLoss(c.dkd_alpha, c.dkd_beta, c.tau, c.dkd_warmup_epochs)
        self._warned = False

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        if self.epoch is None and self.dkd.warmup_epochs > 0 and self.training and not self._warned:
            warnings.warn("DKD warm-up is off: the trainer never called distiller.set_epoch(epoch)", stacklevel=2)
            self._warned = True
        z_t = teachers[self.teacher_name]["logits"]
        # unwarmed: the factor is the weight
        value = self.logit_term(lambda s, t, target: self.dkd(s, t[0], target), logits, [z_t], target=target)
        return {"dkd": (self.dkd.warmup_factor(self.epoch), value)}


@DISTILLERS.register("at")
class AT(_SingleTeacher):
    """Attention transfer on the last-stage maps: CE + at_weight * at_loss."""

    name = "at"
    uses_features = True
    supports_heads = True  # feature-level: shared by the heads

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        return {"at": (self.cfg.at_weight, at_loss(features, teachers[self.teacher_name]["features"], self.cfg.at_p))}


@DISTILLERS.register("mgd")
class MGD(_SingleTeacher):
    """Masked generative distillation: CE + mgd_weight * mgd_loss (generator is training-only)."""

    name = "mgd"
    uses_features = True
    supports_heads = True  # feature-level: shared by the heads

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.cfg
        self.mgd = MGDLoss(
            feature_channels(self.student_spec, "student"),
            feature_channels(self.teacher_specs[self.teacher_name], f"teacher {self.teacher_name!r}"),
            c.mgd_mask_ratio,
            c.mgd_kernel,
        )

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        return {"mgd": (self.cfg.mgd_weight, self.mgd(features, teachers[self.teacher_name]["features"]))}


@DISTILLERS.register("rkd")
class RKD(_SingleTeacher):
    """Distance-wise RKD alone on pooled last-stage features: CE + gamma * L_RKD."""

    name = "rkd"
    uses_features = True
    supports_heads = True  # feature-level: shared by the heads

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        t_feat = teachers[self.teacher_name]["features"]
        return {"rkd": (self.cfg.gamma, rkd_distance_loss(global_pool(features), global_pool(t_feat)))}


@DISTILLERS.register("dtkd")
class DTKD(Distiller):
    """DT-KD (Eq. 14): CE + alpha * L_SR + beta * L_SD + gamma * L_RKD, each term optional.

    L_SR: DATW over all K teachers' logits (mode ``cfg.weighting``). L_SD: SDB on the
    student's last-stage map predicting the fixed residual between the ViT and CNN teachers
    (needs ``prepare``). L_RKD: distances of pooled student vs ViT-teacher features.

    With heads: L_SR per head, each with its own DATW weights (and statistics, ``<head>/datw/..``),
    summed; L_SD and L_RKD are feature-level and computed once.
    """

    name = "dtkd"
    supports_heads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Distiller's arguments
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        self.use_sr = cfg.use_sr and cfg.alpha > 0
        self.use_sd = cfg.use_sd and cfg.beta > 0
        self.use_rkd = cfg.use_rkd and cfg.gamma > 0
        # one SRLoss (own DATW weights and statistics) per head; key "logits" without heads
        self.sr: Optional[torch.nn.ModuleDict] = None
        self.sdd: Optional[StructureDiscrepancyDistillation] = None
        if self.use_sr:
            if not self.teacher_names:
                raise ValueError("dtkd with L_SR needs at least one teacher")
            names = ("logits",) if self.heads is None else self.heads.names
            self.sr = torch.nn.ModuleDict({h: SRLoss(self.teacher_names, cfg.tau, cfg.weighting, cfg.datw_eps,
                                                     cfg.weights_grad) for h in names})
            self._use_teachers(self.teacher_names, features=False)
        if self.use_sd or self.use_rkd:
            self.vit = self.teacher_with_role("vit")
        if self.use_sd:
            self.cnn = self.teacher_with_role("cnn")
            self._use_teachers([self.vit, self.cnn], features=True)
            self.sdd = StructureDiscrepancyDistillation(
                feature_channels(self.student_spec, "student"),
                feature_channels(self.teacher_specs[self.vit], f"teacher {self.vit!r}"),
                feature_channels(self.teacher_specs[self.cnn], f"teacher {self.cnn!r}"),
                variant=cfg.sdb,
                zeta=cfg.zeta,
                rho=cfg.rho,
                phi_dim=cfg.phi_dim if cfg.phi_vit == "pca" else None,
                ridge=cfg.phi_ridge,
                se_reduction=cfg.se_reduction,
                standardize=cfg.sd_standardize,
            )
        if self.use_rkd:
            self._use_teachers([self.vit], features=True)
        self.needs_student_features = self.use_sd or self.use_rkd

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        c = self.cfg
        terms: Terms = {}
        if self.sr is not None:
            s = self._by_head(logits)
            t = [self._by_head(teachers[n]["logits"]) for n in self.teacher_names]
            terms["sr"] = (c.alpha, sum(sr(s[h], [z[h] for z in t]) for h, sr in self.sr.items()))
        if self.sdd is not None:
            terms["sd"] = (c.beta, self.sdd(features, teachers[self.vit]["features"], teachers[self.cnn]["features"]))
        if self.use_rkd:
            vit_emb = global_pool(teachers[self.vit]["features"])
            terms["rkd"] = (c.gamma, rkd_distance_loss(global_pool(features), vit_emb))
        return terms

    def _by_head(self, logits: Tensor) -> dict[str, Tensor]:
        return {"logits": logits} if self.heads is None else self.heads.split(logits)

    @property
    def needs_prepare(self) -> bool:
        return self.sdd is not None and not self.sdd.phi.is_fitted

    def _student_grid(self, x: Tensor) -> tuple[int, ...]:
        """The (T, H, W) of the student's tapped map for this clip size (one eval forward)."""
        was_training = self.student.training
        self.student.eval()
        try:
            _, feat = self._run(self.student, self.student_spec, x, True, "student")
        finally:
            self.student.train(was_training)
        return tuple(feat.shape[2:])

    @torch.no_grad()
    def prepare(self, loader: Iterable[Any], max_batches: Optional[int] = None) -> dict[str, float]:
        """Fit phi_CNN (and the PCA of phi_ViT) in closed form on frozen teacher features.

        Reads loader batches ({"inputs": views, ...} or a dict of views), optionally with
        cached teacher outputs under "teacher_outputs". Statistics are summed over DDP ranks.
        Returns fit statistics (``phi/r2`` = share of the ViT features the CNN teacher explains).
        """
        if self.sdd is None:
            return {}
        max_batches = max_batches if max_batches is not None else self.cfg.prepare_max_batches
        device = next(self.student.parameters()).device
        folds = [FeatureMoments(), FeatureMoments()]  # alternate batches: out-of-sample residual scale
        grid: Optional[tuple[int, ...]] = None
        batches = 0
        for batch in loader:
            if max_batches is not None and batches >= max_batches:
                break
            inputs, cached = unpack_batch(batch)
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            if grid is None:
                grid = self._student_grid(self._view(inputs, STUDENT_VIEW))
            out = self._gather_teachers(inputs, cached, device, names=[self.vit, self.cnn])
            self.sdd.accumulate(folds[batches % 2], out[self.vit]["features"], out[self.cnn]["features"], grid)
            batches += 1
        if batches == 0:
            raise RuntimeError("prepare() got an empty loader: phi needs training-set teacher features")
        for fold in folds:
            fold.all_reduce()
        stats = self.sdd.phi.fit(folds)
        stats["phi/batches"] = float(batches)
        return stats

    def epoch_diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scalars": {}, "histograms": {}}
        for h, sr in (self.sr or {}).items():
            summary = sr.stats.summary()
            sr.stats.reset()
            prefix = "" if self.heads is None else f"{h}/"
            for kind in ("scalars", "histograms"):
                out[kind].update({prefix + k: v for k, v in summary[kind].items()})
        if self.sdd is not None:
            frac = self.sdd.mask_fraction.mean()
            if frac is not None:
                out["scalars"]["sd/mask_fraction"] = frac
            self.sdd.mask_fraction.reset()
        return out
