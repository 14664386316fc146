"""Training engine: one Trainer for teachers and distillation, its contract with what it trains
(``TrainingModule``), deterministic sampling, DDP and checkpoints."""
from dtkd.engine.callbacks import Callback, History
from dtkd.engine.checkpoint import CheckpointManager
from dtkd.engine.config import TrainConfig
from dtkd.engine.contract import RunContext, StepOutput, TrainingModule, TrainPlan
from dtkd.engine.distributed import DistInfo, init_from_env
from dtkd.engine.sampling import EpochSampler, SeededViews, ViewKey
from dtkd.engine.trainer import NonFiniteLossError, Trainer, TrainResult

__all__ = [
    "Callback", "CheckpointManager", "DistInfo", "EpochSampler", "History", "NonFiniteLossError", "RunContext",
    "SeededViews", "StepOutput", "TrainConfig", "TrainPlan", "TrainResult", "Trainer", "TrainingModule", "ViewKey",
    "init_from_env",
]
