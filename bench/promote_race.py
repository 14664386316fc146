"""Concurrent promotion: rounds of K `dtkd promote` processes started at once, each with a
candidate that beats the champion. Counts the winners per round; the champion lock
(`ModelRegistry.champion_lock`) must make it exactly one, every round.

    python bench/promote_race.py --rounds 20 --processes 3       # ~10 s per round on 2 cores

Each round registers a champion (a linear model with the wrong weights) and K identical
candidates (the true weights) in a fresh sqlite MLflow registry under a temp dir, then runs
`python -m dtkd_ops.cli promote --evaluator promote_race:evaluator_factory` for each at once: the
gate measures both models on 256 fixed points (per-point correctness, as it does clips), so every
candidate is significantly better. The LAST line is one JSON object: {"rounds", "processes",
"winners_per_round", "exactly_one_every_round", "seconds"}.
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


def _data():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(4, 2, generator=g)
    x = torch.randn(256, 4, generator=g)
    return x, (x @ w_true).argmax(dim=1), w_true


def _register(reg: ModelRegistry, right: bool) -> int:
    """The true weights (``right``) or their negation: all points right, or nearly none."""
    model = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(_data()[2].T * (1 if right else -1))
    return reg.register_candidate(model, registered_name="student", metrics={}, dataset_fingerprint="bench",
                                  pip_requirements=["torch"]).version


class _Points:
    """The gate's evaluator over the 256 points: ``scores`` per point keyed by id, one latency input."""

    def scores(self, model, ref):
        from dtkd_ops.evaluation import ClipScores

        x, y, _ = _data()
        with torch.no_grad():
            correct = (model(x).argmax(dim=1) == y).tolist()
        return ClipScores(tuple(f"p{i:03d}" for i in range(len(y))), tuple(correct), "bench:points")

    def latency_input(self, ref):
        return (1, 4)


def evaluator_factory(manifest, gate_cfg, registry):
    return _Points()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--processes", type=int, default=3)
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")]),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    winners, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reg = ModelRegistry(f"sqlite:///{tmp}/mlflow.db")
        for r in range(args.rounds):
            reg.set_champion("student", _register(reg, right=False))
            candidates = [_register(reg, right=True) for _ in range(args.processes)]
            procs = [subprocess.Popen([sys.executable, "-m", "dtkd_ops.cli", "promote", "--tracking-uri", reg.tracking_uri,
                                       "--model", "student", "--candidate", str(v), "--gate-config", str(GATE),
                                       "--evaluator", "promote_race:evaluator_factory"],
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
