"""Promotion gate on real videos: the three acceptance cases of the issue, through `dtkd gate`/`promote`.

    python bench/gate_acceptance.py [--epochs 60] [--classes 2] [--train-clips 32] [--test-clips 24]

Writes a synthetic dataset (``--classes`` classes, ``--train-clips``/``--test-clips`` per class,
8 frames at 32x32, ``--difficulty`` nuisance preset), trains an x3d_tiny student at the tiny config's view (4 frames, stride 2, 32 px) for one
epoch and for ``--epochs`` epochs, registers them in a fresh sqlite MLflow registry with the test
manifest logged the way the pipeline's register step logs it, and runs the CLI:

1. the trained model registered twice: `dtkd gate` on the copy -> no significant change (exit 3);
2. the 1-epoch model against the trained champion: `dtkd promote` -> not promoted;
3. the trained model against a 1-epoch champion: `dtkd promote` -> promoted (exit 0).

The LAST line is one JSON object with each case's exit code, outcome, top-1s and paired test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dtkd.assemble import build_model, clip_dataset  # noqa: E402
from dtkd.config import EvalConfig, ModelRef  # noqa: E402
from dtkd.data import build_manifest, generate_synthetic  # noqa: E402
from dtkd.data.views import STUDENT_VIEW  # noqa: E402
from dtkd_ops.cli import main as dtkd  # noqa: E402
from dtkd_ops.evaluation import gate_tags  # noqa: E402
from dtkd_ops.registry import ModelRegistry  # noqa: E402

REF = ModelRef(name="x3d_tiny", frames=4, sampling_rate=2, crop_size=32)
GATE = REPO / "configs" / "gate.yaml"


def train(manifest, epochs: int, num_classes: int, seed: int = 0):
    """Plain cross-entropy training of the student (AdamW, lr 3e-3, batch 8)."""
    torch.manual_seed(seed)
    model = build_model(REF, num_classes)
    data = clip_dataset(manifest, "train", {STUDENT_VIEW: REF.view()}, train=True)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch["inputs"][STUDENT_VIEW]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def case(name: str, cmd: str, reg: ModelRegistry, candidate: int, out: Path) -> dict:
    code = dtkd([cmd, "--tracking-uri", reg.tracking_uri, "--model", "student", "--candidate", str(candidate),
                 "--gate-config", str(GATE), "--json", str(out / f"{name}.json")])
    d = json.loads((out / f"{name}.json").read_text())
    return {"case": name, "command": cmd, "exit": code, "outcome": d["outcome"], "tag": d["tag"],
            "candidate_top1": d["candidate_metrics"].get("top1"), "champion_top1": (d["champion_metrics"] or {}).get("top1"),
            "candidate_latency_ms": d["candidate_metrics"].get("latency_ms"),
            "champion_latency_ms": (d["champion_metrics"] or {}).get("latency_ms"), "test": d["test"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--train-clips", type=int, default=32)
    p.add_argument("--test-clips", type=int, default=24)
    p.add_argument("--difficulty", default="easy", choices=("easy", "default", "hard"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = generate_synthetic(tmp / "synthetic", num_classes=args.classes, frames=8, size=32,
                                  clips_per_class={"train": args.train_clips, "test": args.test_clips},
                                  difficulty=args.difficulty)
        manifest = build_manifest("synthetic", root)
        test_rows = tmp / "gate" / "test_manifest.parquet"
        test_rows.parent.mkdir()
        manifest[manifest["split"] == "test"].to_parquet(test_rows, index=False)
        one, trained = train(manifest, 1, args.classes), train(manifest, args.epochs, args.classes)
        reg = ModelRegistry(f"sqlite:///{tmp}/mlflow.db")

        def register(model) -> int:
            return reg.register_candidate(model, registered_name="student", metrics={}, dataset_fingerprint="bench",
                                          tags=gate_tags(manifest, EvalConfig()), input_spec=REF.input_spec(),
                                          artifacts={"gate": test_rows}).version

        results = []
        reg.set_champion("student", register(trained))
        results.append(case("identical", "gate", reg, register(trained), tmp))
        results.append(case("one_epoch_vs_trained_champion", "promote", reg, register(one), tmp))
        reg.set_champion("student", register(one))
        results.append(case("trained_vs_one_epoch_champion", "promote", reg, register(trained), tmp))
    for r in results:
        print(r, file=sys.stderr)
    print(json.dumps({"epochs": args.epochs, "difficulty": args.difficulty,
                      "classes": args.classes, "test_clips": args.classes * args.test_clips, "cases": results,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    ok = results[0]["exit"] == 3 and results[1]["exit"] != 0 and results[2]["exit"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
