"""Schedule the retraining pipeline on the active stack.

    python -m pipelines.schedule [-c configs/default.yaml] [--schedule configs/retrain-schedule.yaml] [-s STACK]

The run config and the schedule overlay are merged (``zenml pipeline run`` takes one ``-c``) and the
retraining pipeline is submitted with them. Only orchestrators that can schedule accept this: the
Kubernetes orchestrator creates a CronJob that runs the retraining pipeline, which retrains only
when the DVC data version changed. The local orchestrator cannot schedule; this command says so and
exits with status 2 instead of starting an unscheduled run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Optional, Sequence

import yaml

from dtkd_ops.runconfig import merge_files

CANNOT_SCHEDULE = {"local", "local_docker"}


class ScheduleError(RuntimeError):
    pass


def merged_schedule_config(config: str, schedule: str) -> dict:
    merged = merge_files([config, schedule])
    cron = (merged.get("schedule") or {}).get("cron_expression")
    if not cron:
        raise ScheduleError(f"{schedule}: schedule.cron_expression is missing")
    return merged


def schedule_retraining(config: str, schedule: str, stack: Optional[str] = None) -> str:
    from zenml.client import Client

    merged = merged_schedule_config(config, schedule)
    client = Client()
    if stack:
        client.activate_stack(stack)
    orchestrator = client.active_stack_model.components["orchestrator"][0]
    if orchestrator.flavor_name in CANNOT_SCHEDULE:
        raise ScheduleError(
            f"the active stack '{client.active_stack_model.name}' uses the {orchestrator.flavor_name} orchestrator, "
            "which cannot run schedules. Register the Kubernetes stack (k8s/zenml-stack.sh) and pass -s dtkd_k8s, "
            "where the schedule becomes a CronJob; or call `make retrain` from the machine's own cron."
        )
    from pipelines.retraining import retraining_pipeline

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(merged, f)
    retraining_pipeline.with_options(config_path=f.name)()
    return merged["schedule"]["cron_expression"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.schedule", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="configs/default.yaml")
    parser.add_argument("--schedule", default="configs/retrain-schedule.yaml")
    parser.add_argument("-s", "--stack", default=None)
    args = parser.parse_args(argv)
    try:
        cron = schedule_retraining(args.config, args.schedule, args.stack)
    except ScheduleError as err:
        print(f"cannot schedule: {err}", file=sys.stderr)
        return 2
    print(f"retraining scheduled: {cron}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
