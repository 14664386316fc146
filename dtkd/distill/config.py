"""Typed configuration of a distillation method (``DistillConfig``)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .registry import DISTILLERS


class DistillConfig(BaseModel):
    """Which method to run and its hyper-parameters.

    The paper gives no values for alpha, beta, gamma, tau, zeta, rho; the defaults below are
    dtkd's own (see docs/method.md for the reasons). Total loss (Eq. 14):
    CE + alpha * L_SR + beta * L_SD + gamma * L_RKD. A term whose toggle is off or whose
    weight is 0 is not computed at all.
    """

    model_config = ConfigDict(extra="forbid")

    method: str = Field("dtkd", description="distiller registry name: none, kd, dkd, at, mgd, rkd, ofa, cakd, pixelkd, dtkd")

    # Eq. 14 weights and the DT-KD hyper-parameters.
    alpha: float = Field(1.0, ge=0, description="weight of L_SR (also of the KD baseline's term)")
    beta: float = Field(1.0, ge=0, description="weight of L_SD")
    gamma: float = Field(1.0, ge=0, description="weight of L_RKD (also of the RKD baseline)")
    tau: float = Field(4.0, gt=0, description="temperature of L_SR, C_k, KD and DKD")
    zeta: float = Field(0.5, ge=0, le=1, description="quantile of the residual mask M_res (Eq. 9)")
    rho: float = Field(0.5, ge=0, le=1, description="quantile of the activation mask M_act (Eq. 10)")

    # Ablations (Tables 5 and 6, and each loss on/off).
    weighting: Literal["uniform", "confidence", "discrepancy", "datw"] = "datw"
    weights_grad: bool = Field(False, description="let gradients flow through the DATW weights")
    datw_eps: float = Field(1e-8, gt=0, description="epsilon of Eq. 6 and the uniform-fallback threshold")
    sdb: Literal["nl", "se", "nl+se"] = "nl+se"
    se_reduction: int = Field(16, ge=1)
    use_sr: bool = True
    use_sd: bool = True
    use_rkd: bool = True

    # The fixed projections of Eq. 8.
    phi_vit: Literal["identity", "pca"] = "identity"
    phi_dim: Optional[int] = Field(None, ge=1, description="PCA dimension d when phi_vit = 'pca'")
    phi_ridge: float = Field(1e-3, ge=0, description="ridge strength of phi_CNN, relative to the mean feature variance")
    prepare_max_batches: Optional[int] = Field(None, ge=1, description="cap on batches used to fit phi (None = all)")
    prepare_views: Optional[int] = Field(
        None, ge=1, description="augmented views of every training clip phi is fitted on (null: every cached view, "
        "or 2 when the teachers run online; capped by the cached views)"
    )
    # Execution of distillation (not of teacher fine-tuning, hence here and not in TrainConfig).
    teacher_cache_views: int = Field(
        0, ge=0, description="> 0: the teachers run once on this many augmented views of every clip and only the "
        "student trains (dtkd.distill.teacher_cache); 0: teachers run online every step"
    )
    sd_standardize: bool = Field(
        True, description="divide f_res by its training-set RMS (fixed when phi is fitted): L_SD ~ 1 for a zero prediction"
    )

    # The unlabelled transfer set (data.unlabelled): clips no one labelled, on which the teacher
    # terms apply and CE does not; mixed with the labelled train clips, cached like them.
    transfer_set: bool = Field(False, description="distil on the unlabelled clips of data.unlabelled too (teacher terms "
                               "only; CE is averaged over the labelled clips of each batch)")

    # Shared.
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    baseline_teacher: Literal["vit", "cnn"] = Field("vit", description="role of the single teacher baselines use")

    # Baselines (their authors' defaults, see docs/method.md).
    dkd_alpha: float = Field(1.0, ge=0)
    dkd_beta: float = Field(8.0, ge=0)
    dkd_warmup_epochs: int = Field(5, ge=0)
    at_weight: float = Field(7.8125, ge=0, description="beta/2 per squared map distance: Zagoruyko's 1000/2 over their last group's 8x8 locations")
    at_p: float = Field(2.0, gt=0)
    mgd_weight: float = Field(7e-5, ge=0, description="alpha_mgd (Yang et al. use a sum reduction)")
    mgd_mask_ratio: float = Field(0.5, ge=0, lt=1)
    mgd_kernel: int = Field(3, ge=1)
    # OFA-KD (Hao et al. 2023; the authors' defaults: eps 1, temperature 1, both weights 1).
    ofa_eps: float = Field(1.0, ge=0, description="OFA's target-enhancement exponent epsilon: (1 + p_t[y])^eps")
    ofa_tau: float = Field(1.0, gt=0, description="temperature of both softmaxes in the OFA loss (no tau^2 factor)")
    ofa_weight: float = Field(1.0, ge=0, description="weight of the OFA loss summed over the exit branches")
    ofa_final_weight: float = Field(1.0, ge=0, description="weight of the OFA loss on the student's own logits")
    ofa_stages: Optional[list[str]] = Field(
        None, description="student module names whose outputs get an exit branch (null: the stages before the last "
        "of an X3D student, blocks.1-3)"
    )
    ofa_variant: Literal["paper", "code"] = Field(
        "paper", description="OFA class weights: the paper's equation, or the authors' code ((p_t + 1_y)^eps - 1_y)"
    )

    # CAKD (Liu et al. 2022): replacement 0.5 and 3x3 kernels as the paper; the weights 1 and 1 are dtkd's (docs/method.md).
    cakd_pca_weight: float = Field(1.0, ge=0, description="weight of CAKD's PCA-projector loss (attention map + value relation)")
    cakd_gl_weight: float = Field(1.0, ge=0, description="weight of CAKD's GL-projector loss (MSE to the teacher's tokens)")
    cakd_replace_prob: float = Field(
        0.5, ge=0, le=1, description="probability that each of the student's Q, K, V is the teacher's (partially cross attention)"
    )
    cakd_kernel: int = Field(3, ge=1, description="kernel k of the PCA projector's k^3 Q/K/V convolutions (paper: 3x3)")
    cakd_gl_groups: tuple[int, int, int] = Field(
        (4, 4, 4), description="blocks of neighbouring teacher tokens along (T, H, W); each block has its own linear map"
    )

    # Pixel distillation (Guo et al. 2024): one-stage ISRD; eta 10 is the authors' code at a 2x smaller input (50 at 4x).
    pixelkd_scale: float = Field(
        0.5, gt=0, le=1, description="student / large input size in H and W: the student's view crop_size must be this "
        "fraction of the large view's (checked every step; set it in the stage config); sizes the ISRD decoder"
    )
    pixelkd_kd_weight: float = Field(1.0, ge=0, description="weight of the logit KD term (temperature tau)")
    pixelkd_isrd_weight: float = Field(
        10.0, ge=0, description="eta: weight of the ISRD L1 between the decoded input-module map and the large clip"
    )
    pixelkd_stage: Optional[str] = Field(
        None, description="student module whose output the ISRD decoder reads (null: the input module, X3D "
        "blocks.0.conv)"
    )
    pixelkd_hr_view: Optional[str] = Field(
        None, description="view holding the large clip (the ISRD target; null: the baseline teacher's view)"
    )

    @field_validator("cakd_gl_groups")
    @classmethod
    def _cakd_groups_positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1:
            raise ValueError(f"needs three positive block counts (T, H, W), got {list(v)}")
        return v

    @field_validator("pixelkd_stage", "pixelkd_hr_view")
    @classmethod
    def _pixelkd_names(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("give a non-empty name (or null for the default)")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in DISTILLERS:
            raise ValueError(f"unknown distillation method {v!r}; known: {', '.join(DISTILLERS.names())}")
        return v

    @model_validator(mode="after")
    def _transfer_needs_label_free_terms(self) -> "DistillConfig":
        why = {"none": "CE alone learns nothing from them", "dkd": "DKD splits the target class off",
               "ofa": "its loss needs the label"}.get(self.method)
        if self.transfer_set and why:
            raise ValueError(f"transfer_set: method {self.method!r} cannot use unlabelled clips ({why})")
        return self

    @model_validator(mode="after")
    def _ofa_stages_are_names(self) -> "DistillConfig":
        if self.ofa_stages is not None:
            if not self.ofa_stages or any(not s.strip() for s in self.ofa_stages):
                raise ValueError(
                    f"ofa_stages: give non-empty module names (or null for the default), got {self.ofa_stages}"
                )
            if len(set(self.ofa_stages)) != len(self.ofa_stages):
                raise ValueError(f"ofa_stages: module names must be unique, got {self.ofa_stages}")
        return self

    @model_validator(mode="after")
    def _pca_needs_dim(self) -> "DistillConfig":
        if self.phi_vit == "pca" and self.phi_dim is None:
            raise ValueError("phi_vit='pca' needs phi_dim")
        if self.phi_vit == "identity" and self.phi_dim is not None:
            raise ValueError("phi_dim is only used with phi_vit='pca'")
        return self
