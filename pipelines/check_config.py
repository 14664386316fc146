"""Check a ZenML run config before anything runs (``make run`` / ``pretrain`` / ``retrain`` call it).

    python -m pipelines.check_config configs/default.yaml

ZenML ignores a top-level key it does not know (``enable_cahce: false`` silently keeps the
cache on); this refuses it, naming the file, the key and the nearest known key. It then
validates ``parameters.config`` as the pipelines will (every section, the merged training
config of every stage, the model options) and loads the gate config it names, so that a typo
fails here and not after teachers were trained and registered. Exit 0 when the file is sound,
2 with the reasons otherwise.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Optional, Sequence

from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

from dtkd.config import ConfigError, read_yaml, validate_config
from dtkd_ops.gate import load_gate_config

RUN_CONFIG_KEYS = frozenset(PipelineRunConfiguration.model_fields)


def problems(path: Path) -> list[str]:
    """Every reason ``path`` is not a run config the pipelines can use (empty: it is)."""
    try:
        data = read_yaml(path, what="run config")
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    if not isinstance(data, dict):
        return [f"{path}: a run config is a mapping, got {type(data).__name__}"]
    found = []
    for key in sorted(set(data) - RUN_CONFIG_KEYS):
        if str(key).startswith("x-"):  # YAML-anchor holders (dtkd_ops.runconfig drops them)
            continue
        near = difflib.get_close_matches(str(key), sorted(RUN_CONFIG_KEYS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        found.append(f"{path}: {key}: not a ZenML run-config key (ZenML would ignore it){hint}")
    config = (data.get("parameters") or {}).get("config")
    if config is None:
        found.append(f"{path}: parameters.config: missing (the dtkd config the pipelines take)")
        return found
    try:
        cfg = validate_config(config, source=str(path), prefix="parameters.config")
    except ConfigError as err:
        return found + [str(err)]
    try:
        load_gate_config(cfg.registry.gate_config)
    except (FileNotFoundError, ValueError) as err:
        found.append(f"{path}: parameters.config.registry.gate_config: {err}")
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.check_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    found = problems(args.config)
    for line in found:
        print(line, file=sys.stderr)
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())
