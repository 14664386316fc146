"""Typed top-level configuration of a dtkd run.

One YAML file configures a run. It is either a ZenML run config, with the dtkd config under
``parameters.config`` (that is what ``zenml pipeline run -c configs/default.yaml`` reads), or a
plain dtkd config. Every section is a pydantic model that forbids unknown keys, so a typo fails at
load time with an error that names the key path, e.g. ``distill.tau``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dtkd.config_io import _format_errors, format_validation_error, read_yaml  # noqa: F401  (part of this API)
from dtkd.data.config import DataConfig, SyntheticConfig
from dtkd.data.views import ViewSpec
from dtkd.distill.config import DistillConfig
from dtkd.engine.config import TrainConfig


TEACHER_ROLES = ("cnn", "vit")  # models.<role>_teacher


class ConfigError(ValueError):
    """A config file or dict that does not validate; the message names every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Strict):
    """A model chosen by registry name, with optional overrides of its standard input."""

    name: str = Field(description="registry name (dtkd.models.list_models())")
    frames: Optional[int] = Field(None, gt=0, description="frames per clip (null: the model's standard input)")
    sampling_rate: Optional[int] = Field(None, gt=0, description="temporal stride in source frames (null: standard)")
    crop_size: Optional[int] = Field(None, gt=0, description="square crop in pixels (null: standard)")
    pretrained: Optional[str] = Field(None, description="weights to start from: a local file, a URL, 'official', or "
                                      "a registry URI models:/<name>@<alias> (resolved by the pipeline)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="passed to dtkd.models.build")

    @model_validator(mode="after")
    def _buildable(self) -> "ModelRef":
        """Fail at validation, not in the step that builds the model: an unknown name, an option
        the factory does not take, or a value it refuses (built once on the meta device)."""
        problem = _model_problem(self.name, json.dumps(self.overrides, sort_keys=True, default=str))
        if problem:
            raise ValueError(problem)
        return self

    def view(self) -> ViewSpec:
        """The clip this model sees: its registry spec's standard input, with these overrides."""
        from dtkd import models

        spec = models.get_spec(self.name, frames=self.frames, sampling_rate=self.sampling_rate, crop_size=self.crop_size)
        return ViewSpec.from_spec(spec)

    def input_spec(self) -> dict:
        """Name and view: what a registry entry needs to rebuild this model's test loader."""
        return {"model_name": self.name, **self.view().model_dump(mode="json")}


@functools.lru_cache(maxsize=256)
def _model_problem(name: str, overrides_json: str) -> Optional[str]:
    """Why ``build(name, **overrides)`` would fail, or None. Builds on the meta device (no memory,
    no weights loaded); a factory that cannot run there (it reads a tensor value) is not judged."""
    import torch

    from dtkd import models

    overrides = json.loads(overrides_json)
    try:  # build checks the name and the option names first, then the factory the values
        with torch.device("meta"):
            models.build(name, 2, **{k: v for k, v in overrides.items() if k != "pretrained"})
    except (KeyError, TypeError, ValueError) as err:
        return str(err.args[0]) if err.args else repr(err)
    except (RuntimeError, NotImplementedError) as err:
        if "meta" in str(err):
            return None
        return str(err)
    return None


class TeacherConfig(ModelRef):
    source: Literal["train", "registry"] = Field(
        "train", description="train: fine-tune in this run; registry: reuse the version under `registry_alias`")
    registry_alias: str = "champion"
    # A ViT wants a far lower lr than a CNN; validated merged (DTKDConfig.teacher_train_config).
    training: dict[str, Any] = Field(
        default_factory=dict, description="keys of `training` that differ for this teacher (on top of `teacher_training`)")


PRETRAIN_ROLES = ("cnn", "vit", "student")


def _deep_merge(base: dict, top: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _pretraining_data() -> DataConfig:
    return DataConfig(root=Path("data/pretrain"), synthetic=SyntheticConfig(
        vocabulary="pretrain", num_classes=30, clips_per_class={"train": 24, "val": 4, "test": 4},
        size=32, difficulty="easy"), train_scale=(0.7, 1.0))


class PretrainView(_Strict):
    """The input a backbone is pretrained at, given in full: a field left out is the model's
    standard input, not the fine-tuning view's. Kinetics checkpoints are often fine-tuned at
    another clip length than they were trained at (X3D, MViTv2); the convolutions carry over, a
    ViT's relative position tables of another length start afresh (``load_weights`` reports them)."""

    frames: Optional[int] = Field(None, gt=0, description="frames per clip (null: the model's standard input)")
    sampling_rate: Optional[int] = Field(None, gt=0, description="temporal stride in source frames (null: standard)")
    crop_size: Optional[int] = Field(None, gt=0, description="square crop in pixels (null: standard)")


class PretrainingConfig(_Strict):
    """Pretraining on a broader corpus before fine-tuning on the task, as the paper starts every
    model from Kinetics-400 (``pipelines.pretraining``). The models it registers are referenced by
    ``models.<role>.pretrained: models:/<registry_prefix>-<role>@<alias>``."""

    data: DataConfig = Field(default_factory=_pretraining_data, description="the pretraining corpus (default: the "
                             "embedded one, 30 composed classes; a real user points it at Kinetics or sets "
                             "`pretrained` to downloaded weights instead)")
    roles: list[Literal["cnn", "vit", "student"]] = Field(["cnn", "vit"], description="models to pretrain")
    training: dict[str, Any] = Field(default_factory=dict, description="keys of `training` that differ for pretraining")
    views: dict[Literal["cnn", "vit", "student"], PretrainView] = Field(
        default_factory=dict, description="role -> the view its backbone is pretrained at, when not the one it is "
        "fine-tuned at (e.g. teachers pretrained on 8 frames, fine-tuned on 16)")
    registry_prefix: str = "dtkd-pretrained"
    alias: str = Field("pretrained", description="alias the newest pretrained version gets")
    shipped: Optional[str] = Field("weights/pretrained", description="folder of backbones the repository ships "
                                   "(dtkd_ops.shipped): one is loaded instead of trained when it records exactly "
                                   "this pretraining (stage config and corpus bytes); null: always train")

    @model_validator(mode="before")
    @classmethod
    def _data_on_top_of_the_corpus(cls, values: Any) -> Any:
        """``pretraining.data`` keys go on top of the embedded corpus's, not of ``data``'s defaults:
        ``{data: {synthetic: {num_classes: 12}}}`` is still the pretraining vocabulary."""
        if isinstance(values, dict) and isinstance(values.get("data"), dict):
            values = {**values, "data": _deep_merge(_pretraining_data().model_dump(exclude_defaults=True),
                                                    values["data"])}
        return values


class ModelsConfig(_Strict):
    student: ModelRef
    cnn_teacher: TeacherConfig
    vit_teacher: TeacherConfig


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


# ---------------------------------------------------------------- the sections of one stage
class TeacherStage(_Strict):
    """Everything fine-tuning one teacher uses (``DTKDConfig.teacher_stage``)."""

    kind: Literal["teacher"] = "teacher"
    role: Literal["cnn", "vit"]
    model: TeacherConfig
    train: TrainConfig
    data: DataConfig
    evaluation: EvalConfig


class PretrainStage(_Strict):
    """Everything pretraining one model on the pretraining corpus uses (``DTKDConfig.pretrain_stage``)."""

    kind: Literal["pretrain"] = "pretrain"
    role: Literal["cnn", "vit", "student"]
    model: ModelRef  # the role's model and its pretraining view, from scratch (its `pretrained` is not used)
    train: TrainConfig
    data: DataConfig
    evaluation: EvalConfig


class DistillStage(_Strict):
    """Everything distilling the student uses (``DTKDConfig.distill_stage``)."""

    kind: Literal["distill"] = "distill"
    student: ModelRef
    teachers: dict[str, ModelRef]  # role -> the teacher's model (its view)
    distill: DistillConfig
    train: TrainConfig
    data: DataConfig
    evaluation: EvalConfig


class _Layers(ValueError):
    """A merged training config that does not validate, with the config path of every key."""

    def __init__(self, err: ValidationError, origin: dict[str, str], last: str) -> None:
        super().__init__(str(err))
        self.err, self.origin, self.last = err, origin, last


def _merged_train_config(layers: list[tuple[str, Mapping[str, Any]]]) -> TrainConfig:
    """``TrainConfig`` from layers of keys, later layers winning; on error, each bad key is named
    by the layer that set it (e.g. ``models.vit_teacher.training.lr``)."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for path, values in layers:
        merged.update(values)
        origin.update({k: path for k in values})
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        last = next((path for path, values in reversed(layers) if values), layers[0][0])
        raise _Layers(err, origin, last) from None


class DTKDConfig(_Strict):
    """A dtkd run. Every section has the library's defaults (docs/configuration.md lists them),
    so a run config states only what differs."""

    data: DataConfig = DataConfig()
    models: ModelsConfig
    training: TrainConfig = Field(TrainConfig(), description="shared by every training stage")
    teacher_training: dict[str, Any] = Field(default_factory=dict, description="keys of `training` that differ for teachers")
    distill_training: dict[str, Any] = Field(default_factory=dict, description="keys of `training` that differ for distillation")
    distill: DistillConfig = DistillConfig()
    evaluation: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()
    pretraining: PretrainingConfig = PretrainingConfig()

    def teacher_ref(self, role: str) -> TeacherConfig:
        """``models.<role>_teacher`` for a teacher role (``cnn`` or ``vit``)."""
        if role not in TEACHER_ROLES:
            raise ValueError(f"unknown teacher role {role!r}; known: {', '.join(TEACHER_ROLES)}")
        return getattr(self.models, f"{role}_teacher")

    def teacher_train_config(self, role: str) -> TrainConfig:
        """``training``, then ``teacher_training``, then ``models.<role>_teacher.training``."""
        return _merged_train_config([("training", self.training.model_dump()), ("teacher_training", self.teacher_training),
                                     (f"models.{role}_teacher.training", self.teacher_ref(role).training)])

    def distill_train_config(self) -> TrainConfig:
        """``training``, then ``distill_training``."""
        return _merged_train_config([("training", self.training.model_dump()), ("distill_training", self.distill_training)])

    def role_ref(self, role: str) -> ModelRef:
        """The model of a role: ``student`` or a teacher role."""
        return self.models.student if role == "student" else self.teacher_ref(role)

    def pretrain_train_config(self, role: str) -> TrainConfig:
        """``training``, then (teachers) ``models.<role>_teacher.training``, then ``pretraining.training``."""
        own = [] if role == "student" else [(f"models.{role}_teacher.training", self.teacher_ref(role).training)]
        return _merged_train_config([("training", self.training.model_dump()), *own,
                                     ("pretraining.training", self.pretraining.training)])

    def pretrain_stage(self, role: str) -> PretrainStage:
        """Pretrain ``role``'s model (from scratch) on ``pretraining.data``, at ``pretraining.views[role]``
        when given, else at the view it is fine-tuned at."""
        if role not in PRETRAIN_ROLES:
            raise ValueError(f"unknown role {role!r}; known: {', '.join(PRETRAIN_ROLES)}")
        view = self.pretraining.views.get(role)
        ref = self._model_ref(self.role_ref(role)).model_copy(
            update={"pretrained": None, **(view.model_dump() if view else {})})
        return PretrainStage(role=role, model=ref, train=self.pretrain_train_config(role),
                             data=self.pretraining.data, evaluation=self.evaluation)

    def teacher_stage(self, role: str) -> TeacherStage:
        return TeacherStage(role=role, model=self.teacher_ref(role), train=self.teacher_train_config(role),
                            data=self.data, evaluation=self.evaluation)

    def distill_stage(self) -> DistillStage:
        return DistillStage(student=self.models.student,
                            teachers={role: self._model_ref(self.teacher_ref(role)) for role in TEACHER_ROLES},
                            distill=self.distill, train=self.distill_train_config(), data=self.data,
                            evaluation=self.evaluation)

    @staticmethod
    def _model_ref(ref: ModelRef) -> ModelRef:
        """The ModelRef part of a (validated) teacher config: its model and view, nothing else."""
        return ModelRef.model_construct(**{k: getattr(ref, k) for k in ModelRef.model_fields})

    def min_frames(self) -> int:
        """Source frames the longest clip of any model covers: shorter videos cannot be used."""
        refs = (self.models.student, *(self.teacher_ref(r) for r in TEACHER_ROLES))
        return max(ref.view().span for ref in refs)


def validate_config(data: Any, *, source: str = "<dict>", prefix: str = "") -> DTKDConfig:
    """Validate a dict into a DTKDConfig, the merged training config of every stage included; on
    failure raise ConfigError naming each bad key with its full path."""
    title = "invalid dtkd config"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, got {type(data).__name__}")
    try:
        cfg = DTKDConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source, prefix=prefix, title=title)) from None
    try:
        for role in TEACHER_ROLES:
            cfg.teacher_train_config(role)
        for role in cfg.pretraining.roles:
            cfg.pretrain_train_config(role)
        cfg.distill_train_config()
    except _Layers as layered:
        err, origin, last = layered.err, layered.origin, layered.last
    else:
        return cfg

    def where(loc: tuple) -> str:  # the layer that set the key (a model-level error: the last one)
        path = origin.get(str(loc[0]), last) if loc else last
        return ".".join(p for p in (prefix, path) if p)

    raise ConfigError(_format_errors(err, source=source, title=title, prefix_of=where))


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
