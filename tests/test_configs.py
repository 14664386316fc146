"""The shipped configs validate, agree with each other, and bad keys fail naming the key."""
from pathlib import Path

import pytest
import yaml

from dtkd.config import ConfigError, load_config, validate_config
from dtkd.data import DataConfig

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIGS = ["default.yaml", "tiny.yaml", "paper_hmdb51.yaml"]


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_shipped_run_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.distill.method == "dtkd"  # the default pipeline uses the full method


def test_default_run_uses_the_data_dvc_tracks():
    # `make run` runs `dvc repro` (configs/data.yaml) before the pipeline (configs/default.yaml):
    # both must describe the same data, or ingest would refuse the DVC-generated dataset.
    dvc_data = DataConfig.model_validate(yaml.safe_load((REPO / "configs" / "data.yaml").read_text())["data"])
    run_data = load_config(REPO / "configs" / "default.yaml").data
    for field in ("dataset", "root", "split", "synthetic", "store"):
        assert getattr(run_data, field) == getattr(dvc_data, field), field


def _default_dict() -> dict:
    return yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["parameters"]["config"]


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("distill", "tau"), -1.0, "distill.tau: Input should be greater than 0 (got -1.0)"),
        (("distill", "methd"), "kd", "distill.methd: Extra inputs are not permitted"),
        (("distill", "method"), "fitnet", "distill.method: Value error, unknown distillation method 'fitnet'"),
        (("models", "student", "frames"), 0, "models.student.frames: Input should be greater than 0"),
        (("teacher_training", "optimizer"), "lamb", "teacher_training.optimizer: Input should be 'sgd' or 'adamw'"),
        (("data", "dataset"), "kinetic", "data.dataset: Value error, unknown dataset 'kinetic'"),
        # Per-teacher overrides are validated merged with teacher_training, named where they are.
        (("models", "vit_teacher", "training"), {"lr": -1}, "models.vit_teacher.training.lr: Input should be greater than 0"),
        (("models", "cnn_teacher", "training"), {"epoks": 3}, "models.cnn_teacher.training.epoks: Extra inputs are not permitted"),
    ],
)
def test_bad_value_fails_naming_the_key(tmp_path, path, value, message):
    cfg = _default_dict()
    node = cfg
    for key in path[:-1]:
        node = node[key]
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
    cfg["teacher_training"]["lr"] = 0.01
    cfg["models"]["vit_teacher"]["training"] = {"lr": 2e-4, "epochs": 3}
    cfg["models"]["cnn_teacher"].pop("training", None)
    parsed = validate_config(cfg)
    vit, cnn = parsed.teacher_train_config("vit"), parsed.teacher_train_config("cnn")
    assert (vit.lr, vit.epochs) == (2e-4, 3)
    assert cnn == parsed.teacher_training and cnn.lr == 0.01
    # Every other key is the shared section's.
    assert vit.model_dump(exclude={"lr", "epochs"}) == cnn.model_dump(exclude={"lr", "epochs"})
    with pytest.raises(ValueError, match="unknown teacher role 'student'; known: cnn, vit"):
        parsed.teacher_ref("student")
