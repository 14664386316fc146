"""DT-KD and baseline losses: pure functions (plus a thin module where there is state).

One small module per loss; every docstring cites its paper and equation and says where the
code deviates. All losses compute in float32 whatever the input dtype (bf16/fp16 safe) and
return a scalar.
"""
from .at import at_loss, attention_maps
from .datw import (
    WEIGHTING_MODES,
    DATWTerms,
    WeightingMode,
    compute_datw,
    student_teacher_discrepancy,
    teacher_confidence,
    teacher_weights,
)
from .dkd import DKDLoss, dkd_loss, dkd_terms
from .kd import kd_loss
from .mgd import MGDGenerator3d, MGDLoss, mgd_loss, random_spatiotemporal_mask
from .rkd import pair_distances, rkd_distance_loss
from .sd import quantile_mask, sd_loss, structure_masks
from .sr import SRLoss, mix_teacher_logits, sr_loss

__all__ = [
    "WEIGHTING_MODES",
    "DATWTerms",
    "DKDLoss",
    "MGDGenerator3d",
    "MGDLoss",
    "SRLoss",
    "WeightingMode",
    "at_loss",
    "attention_maps",
    "compute_datw",
    "dkd_loss",
    "dkd_terms",
    "kd_loss",
    "mgd_loss",
    "mix_teacher_logits",
    "pair_distances",
    "quantile_mask",
    "random_spatiotemporal_mask",
    "rkd_distance_loss",
    "sd_loss",
    "sr_loss",
    "structure_masks",
    "student_teacher_discrepancy",
    "teacher_confidence",
    "teacher_weights",
]
