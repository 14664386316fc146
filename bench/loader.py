"""Loader throughput: decode-on-the-fly (PyAV, torchcodec if usable) vs the pre-decoded store.

    python bench/loader.py --quick          # < 1 minute on 2 cores
    python bench/loader.py --size 128 --clips-per-class 30 --epochs 2

Generates a synthetic dataset in a temporary directory, builds its clip store, then times a
train DataLoader (two views, as in distillation: student 8x4 @ crop, teacher 16x2 @ 1.5 crop)
for each source and num_workers. The first batch of each run (worker start-up) is timed
apart. Prints a table, then one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtkd.data import (STUDENT_VIEW, ClipDataset, ViewSpec, available_backends, build_manifest, build_store,  # noqa: E402
                       read_frames)
from dtkd.data.synthetic import generate_synthetic  # noqa: E402


def _time_loader(dataset: ClipDataset, workers: int, batch_size: int, epochs: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    clips, first_batch_s, steady_s = 0, 0.0, 0.0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        for i, batch in enumerate(loader):
            now = time.perf_counter()
            if i == 0:
                first_batch_s += now - start
            else:
                clips += len(batch["label"])
                steady_s += now - start
            start = now
    return {"clips": clips, "seconds": round(steady_s, 3), "first_batch_s": round(first_batch_s, 3),
            "clips_per_s": round(clips / steady_s, 1) if steady_s else None}


def _time_decode(paths: list[str], frames: int, backend: str, repeats: int) -> dict:
    """Decode-only cost: every other frame of each video (what a 16x2 view reads)."""
    wanted = list(range(0, frames, 2))
    read_frames(paths[0], wanted, backend=backend)  # warm-up (library init)
    start = time.perf_counter()
    for _ in range(repeats):
        for p in paths:
            read_frames(p, wanted, backend=backend)
    elapsed = time.perf_counter() - start
    return {"backend": backend, "videos": len(paths) * repeats,
            "ms_per_video": round(1000 * elapsed / (len(paths) * repeats), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--clips-per-class", type=int, default=30, help="train clips per class")
    parser.add_argument("--size", type=int, default=64, help="video side in pixels")
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--crop", type=int, default=64, help="student crop (teacher: 1.5x)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips_per_class, args.epochs = 8, 1
    torch.set_num_threads(1)  # the loader is what is measured; keep the main process to one core

    with tempfile.TemporaryDirectory() as tmp:
        work = args.root or Path(tmp)
        t0 = time.perf_counter()
        root = generate_synthetic(work / "synthetic", num_classes=6,
                                  clips_per_class={"train": args.clips_per_class, "test": 1},
                                  frames=args.frames, size=args.size, overwrite=True)
        generation_s = time.perf_counter() - t0
        manifest = build_manifest("synthetic", root)
        t0 = time.perf_counter()
        store = build_store(manifest, work / "store", overwrite=True)
        store_s = time.perf_counter() - t0
        views = {STUDENT_VIEW: ViewSpec(frames=8, sampling_rate=4, crop_size=args.crop),
                 "teacher": ViewSpec(frames=16, sampling_rate=2, crop_size=args.crop * 3 // 2)}
        sources = {f"decode:{b}": dict(backend=b) for b in available_backends()}
        sources["store"] = dict(store=store)
        paths = manifest["path"].tolist()
        decode = [_time_decode(paths, args.frames, b, repeats=1 if args.quick else 3)
                  for b in available_backends()]
        results = []
        for name, kw in sources.items():
            dataset = ClipDataset(manifest, "train", views, train=True, **kw)
            for workers in args.workers:
                results.append({"source": name, "workers": workers,
                                **_time_loader(dataset, workers, args.batch_size, args.epochs)})

    print(f"{'source':<18}{'workers':>8}{'clips':>7}{'clips/s':>10}{'first batch s':>15}")
    for r in results:
        print(f"{r['source']:<18}{r['workers']:>8}{r['clips']:>7}{r['clips_per_s']:>10}{r['first_batch_s']:>15}")
    for d in decode:
        print(f"decode only, {d['backend']}: {d['ms_per_video']} ms per video ({d['videos']} reads)")
    print(f"generation {generation_s:.2f} s ({6 * (args.clips_per_class + 1)} videos of {args.frames}x"
          f"{args.size}^2), store build {store_s:.2f} s")
    summary = {"bench": "loader", "quick": args.quick, "date": datetime.date.today().isoformat(),
               "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
               "videos": 6 * (args.clips_per_class + 1), "frames": args.frames, "size": args.size,
               "batch_size": args.batch_size, "generation_s": round(generation_s, 3),
               "store_build_s": round(store_s, 3), "decode": decode, "results": results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
