"""Time of the data quality gate per 1,000 videos: probe (decode every frame + sha256) and GX.

    python bench/quality_gate.py                       # embedded synthetic set, 1,000 videos
    python bench/quality_gate.py --profile hmdb-like --videos 100   # 320x240, 90 frames @ 30 fps

Profiles: ``synthetic`` = dtkd's own generator with the embedded default's knobs (64x64, 16 frames,
8 fps); ``hmdb-like`` = moving-texture clips at HMDB51's typical 320x240, ~3 s at 30 fps. Videos are
written once under --work-dir and reused. Prints one JSON line with the timings; ``per_1000_s`` is
(probe + GX validation) scaled to 1,000 videos; Data Docs and the one-off GX import are reported
apart (they do not grow with the number of videos in the same way).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _k, _v in {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "ZENML_ANALYTICS_OPT_IN": "false"}.items():
    os.environ.setdefault(_k, _v)


def synthetic_set(root: Path, videos: int):
    from dtkd.data import build_manifest, generate_synthetic

    num_classes = 6
    per_class = max(2, round(videos / num_classes))
    test = max(1, per_class // 3)
    generate_synthetic(root, num_classes=num_classes, clips_per_class={"train": per_class - test, "test": test},
                       frames=16, size=64, fps=8, seed=0, overwrite=True)
    manifest = build_manifest("synthetic", root, on_error="flag")
    from dtkd.data.synthetic import class_names

    return manifest, class_names(num_classes), 16


def hmdb_like_set(root: Path, videos: int):
    import numpy as np
    import pandas as pd

    from dtkd.data.video import write_video

    classes = [f"class_{i:02d}" for i in range(6)]
    rows = []
    for i in range(videos):
        label = classes[i % len(classes)]
        path = root / label / f"{label}_{i:05d}.avi"
        if not path.exists():
            rng = np.random.default_rng(i)
            base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            frames = np.stack([np.roll(base, 3 * t, axis=1) for t in range(90)])
            write_video(path, frames, fps=30)
        rows.append({"video_id": path.stem, "path": str(path), "label": label, "label_idx": i % len(classes),
                     "split": "test" if (i // len(classes)) % 3 == 0 else "train", "frames": 90, "fps": 30.0, "width": 320,
                     "height": 240})
    return pd.DataFrame(rows), classes, 32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["synthetic", "hmdb-like"], default="synthetic")
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "dtkd-bench-quality")
    parser.add_argument("--repeats", type=int, default=1, help="gate runs after the first (warm file cache)")
    args = parser.parse_args(argv)

    from dtkd_ops.quality import QualityRules, run_quality_gate

    root = args.work_dir / f"{args.profile}-{args.videos}"
    t0 = time.perf_counter()
    make = synthetic_set if args.profile == "synthetic" else hmdb_like_set
    manifest, labels, min_frames = make(root, args.videos)
    t_data = time.perf_counter() - t0
    rules = QualityRules(expected_labels=labels, min_frames=min_frames, max_class_imbalance=3.0,
                         max_quarantine_fraction=0.05)

    runs = []
    for i in range(1 + args.repeats):
        with tempfile.TemporaryDirectory() as docs:
            report = run_quality_gate(manifest, rules, docs_dir=Path(docs) / "docs", workers=args.workers)
        runs.append(report.timings)
        if not report.success:
            print(report.summary(), file=sys.stderr)
    warm = runs[-1]
    n = len(manifest)
    per_video = (warm["probe"] + warm["gx_validate"]) / n
    result = {
        "profile": args.profile, "videos": n, "workers": args.workers, "cpus": os.cpu_count(),
        "probe_s": round(warm["probe"], 3), "gx_validate_s": round(warm["gx_validate"], 3),
        "data_docs_s": round(warm["data_docs"], 3), "gx_import_s": round(runs[0]["gx_import"], 3),
        "per_1000_s": round(per_video * 1000, 2),
        "probe_per_1000_s": round(warm["probe"] / n * 1000, 2),
        "gx_per_1000_s": round(warm["gx_validate"] / n * 1000, 2),
        "data_prep_s": round(t_data, 1), "success": report.success,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
