"""Concurrent promotion: rounds of K `dtkd promote` processes started at once, each with a
candidate that beats the champion. Counts the winners per round; the champion lock
(`ModelRegistry.champion_lock`) must make it exactly one, every round.

    python bench/promote_race.py --rounds 20 --processes 3       # ~10 s per round on 2 cores

Each round registers a champion (top-1 0.5) and K identical candidates (top-1 0.9) in a fresh
sqlite MLflow registry under a temp dir, then runs `python -m dtkd_ops.cli promote` for each at
once. The LAST line is one JSON object: {"rounds", "processes", "winners_per_round",
"exactly_one_every_round", "seconds"}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dtkd_ops.registry import ModelRegistry  # noqa: E402

GATE = REPO / "configs" / "gate.yaml"


def _register(reg: ModelRegistry, top1: float) -> int:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    metrics = {"top1": top1, "params": 10, "latency_ms": 1.0}
    return reg.register_candidate(model, registered_name="student", metrics=metrics, dataset_fingerprint="bench",
                                  pip_requirements=["torch"]).version


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--processes", type=int, default=3)
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    winners, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reg = ModelRegistry(f"sqlite:///{tmp}/mlflow.db")
        for r in range(args.rounds):
            reg.set_champion("student", _register(reg, 0.5))
            candidates = [_register(reg, 0.9) for _ in range(args.processes)]
            procs = [subprocess.Popen([sys.executable, "-m", "dtkd_ops.cli", "promote", "--tracking-uri", reg.tracking_uri,
                                       "--model", "student", "--candidate", str(v), "--gate-config", str(GATE)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for v in candidates]
            codes = [proc.wait(timeout=600) for proc in procs]
            won = [v for v, c in zip(candidates, codes) if c == 0]
            champion = reg.get_champion("student").version
            winners.append(len(won))
            print(f"round {r + 1}: winners {won}, champion v{champion}", file=sys.stderr)
            if len(won) == 1 and champion != won[0]:
                print(f"round {r + 1}: the champion v{champion} is not the winner", file=sys.stderr)
                winners[-1] = -1
    print(json.dumps({"rounds": args.rounds, "processes": args.processes, "winners_per_round": winners,
                      "exactly_one_every_round": all(w == 1 for w in winners),
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0 if all(w == 1 for w in winners) else 1


if __name__ == "__main__":
    sys.exit(main())
