"""Calibrate the embedded default: train ONE model with cross-entropy on a synthetic set with the
given knobs, and report its test top-1 per epoch and the wall time.

    OMP_NUM_THREADS=2 python bench/calibrate.py --train 48 --test 16 --size 32 --epochs 12
    OMP_NUM_THREADS=2 python bench/calibrate.py --model mvit_tiny --lr 1e-4 --size 32 --train 48

How docs/runs.md picked the data size, resolution and per-model learning rates. The data set
(and its clip store) is generated under --data-root, one directory per set of generator knobs,
and reused. Training is a teacher stage assembled by ``dtkd.assemble.build_job`` (the pipeline's job), so the
figures are the pipeline's. Prints one line per epoch on stderr, then one JSON object as the
LAST line of stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dtkd.assemble import build_job  # noqa: E402
from dtkd.config import EvalConfig, TeacherConfig, TeacherStage  # noqa: E402
from dtkd.data import prepare_manifest, prepare_store  # noqa: E402
from dtkd.data.config import DataConfig  # noqa: E402
from dtkd.engine import TrainConfig  # noqa: E402


def data_config(args: argparse.Namespace) -> DataConfig:
    knobs = dict(num_classes=args.classes, clips_per_class={"train": args.train, "test": args.test},
                 frames=args.video_frames, size=args.size, fps=8, seed=args.data_seed, difficulty=args.difficulty)
    key = "-".join(str(v) for v in (args.classes, args.train, args.test, args.video_frames, args.size,
                                    args.data_seed, args.difficulty))
    root = args.data_root / f"synthetic-{key}"
    return DataConfig(dataset="synthetic", root=root, synthetic=knobs,
                      store={"enabled": True, "dir": args.data_root / f"store-{key}"},
                      train_scale=tuple(args.train_scale))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/calibrate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="x3d_tiny")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train", type=int, default=48, help="train clips per class")
    p.add_argument("--test", type=int, default=16, help="test clips per class")
    p.add_argument("--size", type=int, default=32, help="video side in pixels (also the crop)")
    p.add_argument("--video-frames", type=int, default=16)
    p.add_argument("--difficulty", default="easy", choices=["easy", "default", "hard"])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=8, help="frames per clip the model sees")
    p.add_argument("--rate", type=int, default=2, help="temporal stride")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--train-scale", type=float, nargs=2, default=[0.7, 1.0])
    p.add_argument("--seed", type=int, default=0, help="initialisation and augmentation seed")
    p.add_argument("--overrides", type=json.loads, default={},
                   help='model builder options as JSON, e.g. \'{"patch_stride": [1, 2, 2]}\'')
    p.add_argument("--warmup-epochs", type=float, default=1)
    p.add_argument("--data-root", type=Path, default=REPO / "data" / "bench_calibrate")
    args = p.parse_args(argv)

    data = data_config(args)
    start = time.perf_counter()
    manifest = prepare_manifest(data)
    prepare_store(data, manifest)
    data_s = time.perf_counter() - start
    ref = TeacherConfig(name=args.model, frames=args.frames, sampling_rate=args.rate, crop_size=args.size,
                        overrides=args.overrides)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adamw", lr=args.lr,
                      weight_decay=args.weight_decay, scheduler="cosine", warmup_epochs=args.warmup_epochs, grad_clip=5.0,
                      seed=args.seed)
    start = time.perf_counter()
    stage = TeacherStage(role="cnn", model=ref, train=cfg, data=data, evaluation=EvalConfig())
    result = build_job(stage, manifest).fit()
    train_s = time.perf_counter() - start
    for h in result.history:
        print(f"epoch {h['epoch']:2d}: train loss {h['train_loss']:.3f} top-1 {100 * h['train_top1']:.1f}%  "
              f"test loss {h['val_loss']:.3f} top-1 {100 * h['val_top1']:.1f}%", file=sys.stderr)
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "test_top1": result.history[-1]["val_top1"], "best_test_top1": result.best["val_top1"],
              "final_train_top1": result.history[-1]["train_top1"], "data_seconds": data_s,
              "train_seconds": train_s}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
