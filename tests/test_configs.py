"""The shipped configs validate, agree with each other, and bad keys fail naming the key."""
from pathlib import Path

import pytest
import yaml

from dtkd.config import ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIGS = ["default.yaml", "tiny.yaml", "paper_hmdb51.yaml", "epic_tiny.yaml"]


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_shipped_run_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.distill.method == "dtkd"  # the default pipeline uses the full method


def test_shipped_dvc_pipelines_are_derived_from_the_run_configs():
    # `make data` runs the DVC pipeline derived from the run config (datasets/<name>/): the committed
    # ones must be what the configs derive now, or DVC would version different data than the run reads.
    from dtkd_ops.dvc_stages import stale

    for name in RUN_CONFIGS:
        assert stale(REPO / "configs" / name, REPO) == [], name
    # Configs with the same data share one pipeline (DVC refuses two stages writing one path).
    from dtkd_ops.dvc_stages import pipeline_dir_for

    assert pipeline_dir_for(REPO / "configs" / "default.yaml", REPO)[0] == Path("datasets/default")


def _default_dict() -> dict:
    return yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["parameters"]["config"]


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("distill", "tau"), -1.0, "distill.tau: Input should be greater than 0 (got -1.0)"),
        (("distill", "methd"), "kd", "distill.methd: Extra inputs are not permitted"),
        (("distill", "method"), "fitnet", "distill.method: Value error, unknown distillation method 'fitnet'"),
        (("models", "student", "frames"), 0, "models.student.frames: Input should be greater than 0"),
        (("training", "optimizer"), "lamb", "training.optimizer: Input should be 'sgd' or 'adamw'"),
        # A stage's training keys are validated merged with `training`, named where they are.
        (("teacher_training", "optimizer"), "lamb", "teacher_training.optimizer: Input should be 'sgd' or 'adamw'"),
        (("distill_training", "teacher_cache_views"), 4, "distill_training.teacher_cache_views: Extra inputs are not permitted"),
        (("distill_training", "warmup_epochs"), 30, "distill_training: Value error, warmup_epochs (30.0) must be < epochs (24)"),
        (("data", "dataset"), "kinetic", "data.dataset: Value error, unknown dataset 'kinetic'"),
        # Per-teacher overrides are validated merged with teacher_training, named where they are.
        (("models", "vit_teacher", "training"), {"lr": -1}, "models.vit_teacher.training.lr: Input should be greater than 0"),
        (("models", "cnn_teacher", "training"), {"epoks": 3}, "models.cnn_teacher.training.epoks: Extra inputs are not permitted"),
        # Model options fail at validation, not in the step that builds the model (issue 13, item 5).
        (("models", "student", "overrides"), {"spatial_stridez": [2, 2, 2, 1]},
         "models.student: Value error, model 'x3d_tiny' does not accept override(s) ['spatial_stridez']"),
        (("models", "student", "overrides"), {"spatial_strides": [2, 2]},
         "models.student: Value error, spatial_strides: four strides of 1 or 2 (one per stage), got [2, 2]"),
        (("models", "vit_teacher", "name"), "mvit_tinyy", "models.vit_teacher: Value error, unknown model 'mvit_tinyy'"),
        (("training", "seed"), -1, "training.seed: Input should be greater than or equal to 0"),
    ],
)
def test_bad_value_fails_naming_the_key(tmp_path, path, value, message):
    cfg = _default_dict()
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"parameters": {"config": cfg}}))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(bad) in str(err.value)
    assert f"parameters.config.{message}" in str(err.value)


def test_missing_section_and_bad_files_are_named(tmp_path):
    cfg = _default_dict()
    del cfg["models"]
    with pytest.raises(ConfigError, match=r"<dict>: invalid dtkd config\n  models: Field required"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("parameters: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "noconfig.yaml").write_text("parameters: {other: 1}\n")
    with pytest.raises(ConfigError, match="parameters.config is missing"):
        load_config(tmp_path / "noconfig.yaml")


def test_teacher_overrides_apply_to_that_teacher_only():
    cfg = _default_dict()
    cfg["training"]["lr"] = 0.01
    cfg["models"]["vit_teacher"]["training"] = {"lr": 2e-4, "epochs": 3}
    cfg["models"]["cnn_teacher"].pop("training", None)
    parsed = validate_config(cfg)
    vit, cnn = parsed.teacher_train_config("vit"), parsed.teacher_train_config("cnn")
    assert (vit.lr, vit.epochs) == (2e-4, 3)
    # the CNN teacher: the shared section, then teacher_training (the default's epochs) only
    assert cnn.model_dump(exclude={"epochs"}) == parsed.training.model_dump(exclude={"epochs"}) and cnn.lr == 0.01
    assert cnn.epochs == cfg["teacher_training"]["epochs"]
    # Every other key is the shared section's; distillation has its own keys on top of it.
    assert parsed.distill_train_config().model_dump(exclude={"epochs"}) == parsed.training.model_dump(exclude={"epochs"})
    assert vit.model_dump(exclude={"lr", "epochs"}) == cnn.model_dump(exclude={"lr", "epochs"})
    with pytest.raises(ValueError, match="unknown teacher role 'student'; known: cnn, vit"):
        parsed.teacher_ref("student")


def test_pretrain_stage_is_the_roles_model_from_scratch_on_the_corpus():
    cfg = _default_dict()
    cfg["models"]["vit_teacher"]["training"] = {"lr": 2e-4}
    cfg["models"]["cnn_teacher"]["pretrained"] = "models:/dtkd-pretrained-cnn@pretrained"
    cfg["pretraining"] = {"training": {"epochs": 2}, "roles": ["cnn", "vit", "student"]}
    parsed = validate_config(cfg)
    cnn = parsed.pretrain_stage("cnn")
    assert cnn.kind == "pretrain" and cnn.model.pretrained is None  # never from its own weights
    assert cnn.model.view() == parsed.teacher_ref("cnn").view()
    assert cnn.data == parsed.pretraining.data and cnn.data.synthetic.vocabulary == "pretrain"
    assert cnn.data.root != parsed.data.root
    # training, then the teacher's own keys, then pretraining.training
    assert (cnn.train.epochs, cnn.train.lr) == (2, parsed.training.lr)
    assert (parsed.pretrain_stage("vit").train.lr, parsed.pretrain_stage("vit").train.epochs) == (2e-4, 2)
    assert parsed.pretrain_stage("student").model.name == parsed.models.student.name
    with pytest.raises(ValueError, match="unknown role 'teacher'"):
        parsed.pretrain_stage("teacher")
    cfg["pretraining"] = {"training": {"epoks": 2}}
    with pytest.raises(ConfigError, match="pretraining.training.epoks: Extra inputs"):
        validate_config(cfg)


def test_pretraining_views_give_the_pretraining_input_in_full():
    cfg = _default_dict()
    cfg["models"]["cnn_teacher"].update(frames=16, sampling_rate=1, crop_size=32)
    cfg["pretraining"] = {"roles": ["cnn", "vit"], "views": {"cnn": {"sampling_rate": 2, "crop_size": 32}}}
    parsed = validate_config(cfg)
    cnn = parsed.pretrain_stage("cnn").model
    # frames left out is the model's standard input (x3d_tiny_m: 8), not the fine-tuning view's 16
    assert (cnn.frames, cnn.sampling_rate, cnn.crop_size) == (None, 2, 32)
    assert (cnn.view().frames, cnn.view().span) == (8, 16)
    assert parsed.teacher_ref("cnn").view().frames == 16  # fine-tuning keeps its own view
    assert cnn.name == "x3d_tiny_m" and cnn.overrides == parsed.teacher_ref("cnn").overrides
    # a role without a view is pretrained at the view it is fine-tuned at
    assert parsed.pretrain_stage("vit").model.view() == parsed.teacher_ref("vit").view()
    cfg["pretraining"]["views"] = {"cnn": {"frame": 8}}
    with pytest.raises(ConfigError, match="pretraining.views.cnn.frame: Extra inputs"):
        validate_config(cfg)
    cfg["pretraining"]["views"] = {"teacher": {"frames": 8}}
    with pytest.raises(ConfigError, match="pretraining.views"):
        validate_config(cfg)


def test_a_registry_uri_reaching_the_core_is_refused_with_the_way_out():
    from dtkd import models

    with pytest.raises(ValueError, match="registry URI; resolve it.*dtkd_ops.pretrained"):
        models.build("x3d_tiny", 3, pretrained="models:/dtkd-pretrained-cnn@pretrained")


def test_the_configuration_reference_is_current():
    from dtkd.config_reference import render

    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: python -m dtkd.config_reference > docs/configuration.md")


def _restated_defaults(raw: dict, model, path: str = "") -> list[str]:
    """Keys of ``raw`` whose value is the library default of ``model`` at that place."""
    import json

    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    out = []
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            continue  # a typo: the validation tests cover it
        annotation = field.annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _restated_defaults(value, annotation, f"{path}{key}.")
            continue
        if field.default is PydanticUndefined:
            continue
        default = field.default.model_dump(mode="json") if isinstance(field.default, BaseModel) else field.default
        if json.loads(json.dumps(default, default=str)) == value:
            out.append(f"{path}{key}")
    return out


@pytest.mark.parametrize("name", RUN_CONFIGS + ["ci-overlay.yaml"])
def test_shipped_run_configs_list_only_what_differs_from_the_defaults(name):
    from dtkd.config import DTKDConfig

    raw = yaml.safe_load((REPO / "configs" / name).read_text())["parameters"]["config"]
    assert _restated_defaults(raw, DTKDConfig) == []


def test_the_defaults_check_sees_a_restated_default():
    from dtkd.config import DTKDConfig

    raw = {"distill": {"tau": 4.0, "alpha": 2.0}, "data": {"synthetic": {"size": 64}}, "training": {"lr": 0.01}}
    assert _restated_defaults(raw, DTKDConfig) == ["distill.tau", "data.synthetic.size", "training.lr"]
