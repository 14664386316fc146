"""ZenML's model stages from MLflow's aliases, on the command line (steps/model_stages.py).

    python -m pipelines.model_stages sync     [--model dtkd-student]   # stages <- aliases
    python -m pipelines.model_stages rollback [--model dtkd-student]   # `dtkd rollback`, then sync (make rollback)
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dtkd_ops.registry import ModelRegistry
from steps.model_stages import sync_stages


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.model_stages", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["sync", "rollback"])
    parser.add_argument("--model", default="dtkd-student", help="MLflow registered model")
    parser.add_argument("--zenml-model", default=None, help="ZenML model (default: the same name)")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    from steps.stack import tracking_uri

    uri = args.tracking_uri or tracking_uri()
    if args.command == "rollback":
        champion = ModelRegistry(uri).rollback_champion(args.model)
        print(f"{args.model}: champion back to v{champion.version}")
    changed = sync_stages(args.model, args.zenml_model or args.model, tracking_uri=uri)
    print(f"ZenML stages of {args.zenml_model or args.model}: " + (", ".join(f"{k} -> {v}" for k, v in changed.items())
                                                                   or "already in step with the MLflow aliases"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
