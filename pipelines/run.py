"""Run ZenML pipelines one after another in one process, each as ``zenml pipeline run SOURCE -c
CONFIG`` runs it (``make run``: the pretraining pipeline, then the training pipeline):

    python -m pipelines.run -c configs/default.yaml \\
        pipelines.pretraining.pretraining_pipeline pipelines.training.training_pipeline

One start-up of torch, ZenML, MLflow and GX instead of one per pipeline (about 20 s each here,
docs/runs.md). Every source is imported before the first pipeline runs, so a wrong source fails
before anything was trained. The first pipeline that fails stops the rest (exit 1).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from zenml.client import Client
from zenml.pipelines.pipeline_definition import Pipeline
from zenml.utils import source_utils


def load_pipeline(source: str) -> Pipeline:
    """The pipeline instance at ``source`` (``module.attribute``), or a ValueError naming it."""
    try:
        obj = source_utils.load(source)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{source}: cannot import it as a pipeline: {err}") from None
    if not isinstance(obj, Pipeline):
        raise ValueError(f"{source}: is a {type(obj).__name__}, not a ZenML pipeline")
    return obj


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", type=Path, required=True, help="ZenML run config (YAML)")
    p.add_argument("sources", nargs="+", help="pipeline sources, run in this order")
    args = p.parse_args(argv)
    if not args.config.is_file():
        print(f"{args.config}: no such run config", file=sys.stderr)
        return 2
    if not Client.find_repository():  # as the zenml CLI: sources resolve against the working directory
        source_utils.set_custom_source_root(source_root=os.getcwd())
    try:
        pipelines = [load_pipeline(s) for s in args.sources]
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    for source, pipeline in zip(args.sources, pipelines):
        try:
            pipeline.with_options(config_path=str(args.config))()
        except Exception as err:  # the run's own log has the traceback; name the pipeline that stopped
            print(f"{source} failed: {type(err).__name__}: {err}", file=sys.stderr)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
