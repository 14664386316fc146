"""What one distillation step of a config costs in data: views rendered, frames read, seconds.

    OMP_NUM_THREADS=1 python bench/distill_step.py                       # configs/default.yaml, 2 epochs
    OMP_NUM_THREADS=1 python bench/distill_step.py --config configs/tiny.yaml --epochs 1

Runs the config's distill stage exactly as the pipeline's ``distill_student`` step does
(``dtkd.assemble.build_job`` + ``Job.fit``), with teachers built from the config (untrained: the
data cost does not depend on their weights), and counts, per training step, the views every
training item carries and the frames read for it (decoded, or read from the clip store). With
cached teachers the loop should render the student's view alone; the set-up (cache build, phi
fit) is reported apart. The LAST line printed is one JSON object with the figures, the thread
count and the CPU model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dtkd.assemble import build_job, build_model  # noqa: E402
from dtkd.config import TEACHER_ROLES, load_config  # noqa: E402
from dtkd.data import ClipDataset, num_classes_of, prepare_manifest  # noqa: E402


class Counter:
    """Counts training items, their views and the frames read for them, by phase."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.counts: dict[str, dict[str, int]] = {}
        self.t0 = self.t1 = 0.0

    def add(self, key: str, n: int) -> None:
        self.counts.setdefault(self.phase, {"items": 0, "views": 0, "frames": 0})[key] += n

    # Trainer callback hooks
    def on_train_start(self, trainer) -> None:
        self.phase, self.t0 = "train", time.perf_counter()

    def on_epoch_end(self, epoch, metrics) -> None:
        pass

    def on_train_end(self, result) -> None:
        self.t1 = time.perf_counter()


def counting(counter: Counter):
    """Wraps ClipDataset so that every training item and read is counted; returns the undo."""
    get, read = ClipDataset.__getitem__, ClipDataset._read

    def counted_get(self, index):
        item = get(self, index)
        if self.train:
            counter.add("items", 1)
            counter.add("views", len(item["inputs"]))
        return item

    def counted_read(self, index, indices):
        if self.train:
            counter.add("frames", len(indices))
        return read(self, index, indices)

    ClipDataset.__getitem__, ClipDataset._read = counted_get, counted_read

    def undo() -> None:
        ClipDataset.__getitem__, ClipDataset._read = get, read

    return undo


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    from bench.methods import cpu_model

    cfg = load_config(args.config)
    manifest = prepare_manifest(cfg.data)
    torch.manual_seed(0)
    teachers = {role: build_model(cfg.teacher_ref(role), num_classes_of(manifest)).eval() for role in TEACHER_ROLES}
    stage = cfg.distill_stage()
    stage.train = stage.train.model_copy(update={"epochs": args.epochs})
    counter = Counter()
    undo = counting(counter)
    t0 = time.perf_counter()
    try:
        job = build_job(stage, manifest, teachers=teachers)
        job.fit(callbacks=[counter], device=torch.device("cpu"), progress=False)
    finally:
        undo()
    steps = args.epochs * (len(job.train) // stage.train.batch_size)
    train = counter.counts["train"]
    report = {"config": str(args.config), "method": stage.distill.method,
              "teacher_cache_views": stage.distill.teacher_cache_views, "train_steps": steps,
              "batch_size": stage.train.batch_size, "views_per_step": train["views"] / steps,
              "frames_read_per_step": train["frames"] / steps,
              "train_loop_s_per_step": round((counter.t1 - counter.t0) / steps, 4),
              "setup": counter.counts.get("setup"), "wall_s": round(time.perf_counter() - t0, 1),
              "torch_threads": torch.get_num_threads(), "cpu": cpu_model()}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
