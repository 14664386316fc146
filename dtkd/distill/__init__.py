"""DT-KD distillation: losses (pure functions), the SDB, and distillers chosen by name.

Core library: imports torch and pydantic only (never zenml, mlflow or dvc).
"""
from . import losses
from .config import DistillConfig
from .diagnostics import DATWStats
from .distiller import DistillOutput, Distiller, TeacherRef, build_distiller
from .features import align_to_grid, global_pool
from .methods import AT, DKD, DTKD, KD, MGD, RKD, PlainTraining
from . import methods_ofa  # noqa: F401  registers "ofa" (OFA-KD)
from . import methods_cakd  # noqa: F401  registers "cakd" (CAKD)
from . import methods_pixelkd  # noqa: F401  registers "pixelkd" (pixel distillation)
from .projection import ClosedFormPhi, FeatureMoments
from .registry import DISTILLERS
from .sdb import SDB_VARIANTS, NonLocal3d, SqueezeExcite3d, StructureDiscrepancyBranch
from .sdd import StructureDiscrepancyDistillation
from .teacher_cache import TeacherCache

__all__ = [
    "AT",
    "DISTILLERS",
    "DKD",
    "DTKD",
    "DATWStats",
    "ClosedFormPhi",
    "DistillConfig",
    "DistillOutput",
    "Distiller",
    "FeatureMoments",
    "KD",
    "MGD",
    "NonLocal3d",
    "PlainTraining",
    "RKD",
    "SDB_VARIANTS",
    "SqueezeExcite3d",
    "StructureDiscrepancyBranch",
    "StructureDiscrepancyDistillation",
    "TeacherCache",
    "TeacherRef",
    "align_to_grid",
    "build_distiller",
    "global_pool",
    "losses",
]
