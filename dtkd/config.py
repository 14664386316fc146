"""Typed top-level configuration of a dtkd run.

One YAML file configures a run. It is either a ZenML run config, with the dtkd config under
``parameters.config`` (that is what ``zenml pipeline run -c configs/default.yaml`` reads), or a
plain dtkd config. Every section is a pydantic model that forbids unknown keys, so a typo fails at
load time with an error that names the key path, e.g. ``distill.tau``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dtkd.data.config import DataConfig
from dtkd.distill.config import DistillConfig
from dtkd.engine.config import TrainConfig


TEACHER_ROLES = ("cnn", "vit")  # models.<role>_teacher


class ConfigError(ValueError):
    """A config file or dict that does not validate; the message names every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Strict):
    """A model chosen by registry name, with optional overrides of its standard input."""

    name: str
    frames: Optional[int] = Field(None, gt=0)
    sampling_rate: Optional[int] = Field(None, gt=0)
    crop_size: Optional[int] = Field(None, gt=0)
    pretrained: Optional[str] = None  # local file or URL of weights to start from
    overrides: dict[str, Any] = Field(default_factory=dict)  # passed to dtkd.models.build


class TeacherRef(ModelRef):
    # "train": fine-tune in this run; "registry": reuse the version under `registry_alias`
    source: Literal["train", "registry"] = "train"
    registry_alias: str = "champion"
    # Keys of `teacher_training` that differ for this teacher (a ViT wants a far lower lr than a
    # CNN); validated merged with `teacher_training` (DTKDConfig.teacher_train_config).
    training: dict[str, Any] = Field(default_factory=dict)


class ModelsConfig(_Strict):
    student: ModelRef
    cnn_teacher: TeacherRef
    vit_teacher: TeacherRef


class EvalConfig(_Strict):
    num_clips: int = Field(1, gt=0)
    num_crops: int = Field(1, gt=0)
    batch_size: int = Field(8, gt=0)


class RegistryConfig(_Strict):
    student_name: str = "dtkd-student"
    teacher_prefix: str = "dtkd-teacher"
    gate_config: str = "configs/gate.yaml"
    # False: the pipeline registers `challenger` and reports the gate's verdict but leaves
    # `champion` alone, so that a reviewed CI job (`dtkd promote`) makes the move.
    auto_promote: bool = True


class DTKDConfig(_Strict):
    data: DataConfig
    models: ModelsConfig
    teacher_training: TrainConfig
    distill_training: TrainConfig
    distill: DistillConfig
    evaluation: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()

    def teacher_ref(self, role: str) -> TeacherRef:
        """``models.<role>_teacher`` for a teacher role (``cnn`` or ``vit``)."""
        if role not in TEACHER_ROLES:
            raise ValueError(f"unknown teacher role {role!r}; known: {', '.join(TEACHER_ROLES)}")
        return getattr(self.models, f"{role}_teacher")

    def teacher_train_config(self, role: str) -> TrainConfig:
        """``teacher_training`` with the ``models.<role>_teacher.training`` overrides applied."""
        ref = self.teacher_ref(role)
        return TrainConfig.model_validate({**self.teacher_training.model_dump(), **ref.training})


def format_validation_error(err: ValidationError, *, source: str, prefix: str = "",
                            title: str = "invalid configuration") -> str:
    """``source: title`` then one line per bad key: ``  key.path: message (got value)``."""
    lines = [f"{source}: {title}"]
    for e in err.errors():
        key = ".".join(str(p) for p in (*([prefix] if prefix else []), *e["loc"]))
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {e['msg']}{got}")
    return "\n".join(lines)


def validate_config(data: Any, *, source: str = "<dict>", prefix: str = "") -> DTKDConfig:
    """Validate a dict into a DTKDConfig; on failure raise ConfigError naming each bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, got {type(data).__name__}")
    try:
        cfg = DTKDConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source, prefix=prefix, title="invalid dtkd config")) from None
    for role in TEACHER_ROLES:
        try:
            cfg.teacher_train_config(role)
        except ValidationError as err:
            # Name the override (models.vit_teacher.training.lr), not a merged dict of no file.
            key = ".".join(p for p in (prefix, "models", f"{role}_teacher", "training") if p)
            raise ConfigError(format_validation_error(err, source=source, prefix=key, title="invalid dtkd config")) from None
    return cfg


def read_yaml(path: str | Path, *, what: str = "file") -> Any:
    """The parsed content of a YAML file. Errors name the file: FileNotFoundError
    ("<path>: <what> not found") or ValueError ("<path>: not valid YAML: ...")."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None


def load_config(path: str | Path) -> DTKDConfig:
    """Load a dtkd config from a YAML file (a ZenML run config or a plain dtkd config)."""
    path = Path(path)
    try:
        raw = read_yaml(path, what="config file")
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if isinstance(raw, dict) and "parameters" in raw:
        params = raw["parameters"] or {}
        if "config" not in params:
            raise ConfigError(f"{path}: parameters.config is missing")
        return validate_config(params["config"], source=str(path), prefix="parameters.config")
    return validate_config(raw, source=str(path))
