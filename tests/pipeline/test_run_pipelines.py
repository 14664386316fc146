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


def test_a_source_that_is_not_a_pipeline_is_refused_before_any_runs(config, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(run, "load_pipeline", _recording(run.load_pipeline, ran))
    code = run.main(["-c", str(config), "pipelines.training.training_pipeline", "pipelines.run.main"])
    assert code == 2
    assert "pipelines.run.main: is a function, not a ZenML pipeline" in capsys.readouterr().err
    assert ran == ["pipelines.training.training_pipeline", "pipelines.run.main"]  # loaded, none run


def test_unknown_module_and_attribute_and_config_are_named(config, capsys):
    assert run.main(["-c", str(config), "pipelines.no_such_module.p"]) == 2
    assert "pipelines.no_such_module.p: cannot import it as a pipeline" in capsys.readouterr().err
    assert run.main(["-c", str(config), "pipelines.training.no_such_pipeline"]) == 2
    assert "pipelines.training.no_such_pipeline: cannot import it as a pipeline" in capsys.readouterr().err
    assert run.main(["-c", str(config.parent / "missing.yaml"), "pipelines.training.training_pipeline"]) == 2
    assert "missing.yaml: no such run config" in capsys.readouterr().err


def _recording(load, seen):
    def wrapped(source):
        seen.append(source)
        return load(source)
    return wrapped
