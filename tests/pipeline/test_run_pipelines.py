"""`python -m pipelines.run` (what `make run` calls): every source is checked before any pipeline
runs, and a wrong one is named. The runs themselves: tests/pipeline/test_training_pipeline.py."""
from __future__ import annotations

import pytest

from pipelines import run


@pytest.fixture
def config(tmp_path, monkeypatch):
    from zenml.utils import source_utils

    # main() may set ZenML's source root, a process global: restored after each test
    monkeypatch.setattr(source_utils, "_CUSTOM_SOURCE_ROOT", source_utils._CUSTOM_SOURCE_ROOT)
    path = tmp_path / "run.yaml"
    path.write_text("parameters: {}\n")
    return path


@pytest.fixture
def calls(monkeypatch):
    """Every pipeline run main() starts, as (name, config_path), without running it."""
    from zenml.pipelines.pipeline_definition import Pipeline

    seen = []

    def with_options(self, **kwargs):
        seen.append((self.name, kwargs.get("config_path")))
        return self

    monkeypatch.setattr(Pipeline, "with_options", with_options)
    monkeypatch.setattr(Pipeline, "__call__", lambda self, *a, **k: None)
    return seen


def test_pipelines_run_in_the_order_given_each_with_the_config(config, calls):
    sources = ["pipelines.pretraining.pretraining_pipeline", "pipelines.training.training_pipeline"]
    assert run.main(["-c", str(config), *sources]) == 0
    assert calls == [("pretraining_pipeline", str(config)), ("training_pipeline", str(config))]


def test_a_source_that_is_not_a_pipeline_is_refused_before_any_runs(config, calls, capsys):
    code = run.main(["-c", str(config), "pipelines.training.training_pipeline", "pipelines.run.main"])
    assert code == 2
    assert "pipelines.run.main: is a function, not a ZenML pipeline" in capsys.readouterr().err
    assert calls == []  # the valid first source did not run either


def test_unknown_module_and_attribute_and_config_are_named(config, capsys):
    assert run.main(["-c", str(config), "pipelines.no_such_module.p"]) == 2
    assert "pipelines.no_such_module.p: cannot import it as a pipeline" in capsys.readouterr().err
    assert run.main(["-c", str(config), "pipelines.training.no_such_pipeline"]) == 2
    assert "pipelines.training.no_such_pipeline: cannot import it as a pipeline" in capsys.readouterr().err
    assert run.main(["-c", str(config.parent / "missing.yaml"), "pipelines.training.training_pipeline"]) == 2
    assert "missing.yaml: no such run config" in capsys.readouterr().err

