"""Parity and CPU latency of the default student and X3D-S as PyTorch (eager), TorchScript and
ONNX Runtime, plus PyTorch with int8 dynamically quantised Linear layers; the table of
docs/export.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/export.py                      # both models (~5 min on 2 busy cores)
    .venv/bin/python bench/export.py --models student --repeats 10 --json /tmp/e.json

Clips are real: the default dataset's test videos (data/default/manifest.parquet, `make data`),
or, when it is absent, a synthetic set generated in a temporary folder; each model sees them at
its own view through dtkd's test loader. The weights are a seeded random initialisation (parity
and latency do not depend on training; accuracy deltas need a trained model: `dtkd export
--int8` on a registered one). Latency: batch 1, median of ``--repeats`` forwards after
``--warmup``, every format timed interleaved in one process at ``--threads`` threads (torch:
dtkd.eval.complexity.fixed_threads; onnxruntime: intra_op_num_threads), so on a shared, busy
machine the ratios between formats are the figures to compare, not the absolute times.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.methods import cpu_model  # noqa: E402
from dtkd import assemble, models  # noqa: E402
from dtkd.config import EvalConfig  # noqa: E402
from dtkd.data import DataConfig, ViewSpec, build_manifest, num_classes_of  # noqa: E402
from dtkd.data.views import STUDENT_VIEW  # noqa: E402
from dtkd.eval import export as ex  # noqa: E402
from dtkd.eval.complexity import count_params  # noqa: E402

# name -> (registry name, build overrides, view). The student as configs/default.yaml builds it;
# X3D-S at its zoo view (13 frames x 160^2, stride 6).
MODELS = {
    "student": ("x3d_tiny", {"crop_size": 32, "spatial_strides": [2, 2, 2, 1]},
                ViewSpec(frames=8, sampling_rate=2, crop_size=32)),
    "x3d_s": ("x3d_s", {}, None),
}


def load_manifest(path: Path, tmp: Path):
    """The default dataset's manifest, or a synthetic one generated under ``tmp``."""
    import pandas as pd

    if path.exists():
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        base = path.parent
        df["path"] = [p if Path(p).is_absolute() else str((ROOT / p) if (ROOT / p).exists() else base / p)
                      for p in df["path"]]
        return df, f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} (test split)"
    from dtkd.data.synthetic import generate_synthetic

    root = generate_synthetic(tmp / "synthetic", num_classes=6, clips_per_class={"train": 1, "test": 8}, size=32)
    return build_manifest("synthetic", root, split=1), "synthetic (6 classes x 8 test clips, generated)"


def batches(manifest, view: ViewSpec, max_clips: int):
    loader = assemble.test_loader(manifest, view, EvalConfig(batch_size=8), DataConfig(num_workers=0))
    out, n = [], 0
    for batch in loader:
        clips = batch["inputs"][STUDENT_VIEW].flatten(0, 1)
        out.append(clips[: max_clips - n])
        n += out[-1].shape[0]
        if n >= max_clips:
            break
    return out


def measure(key: str, manifest, num_classes: int, args, tmp: Path) -> dict:
    name, overrides, view = MODELS[key]
    spec = models.get_spec(name, **overrides)
    view = view or ViewSpec.from_spec(spec)
    torch.manual_seed(0)
    model = models.build(name, num_classes, frames=view.frames, **overrides).eval()
    clips = batches(manifest, view, args.clips if key == "student" else args.clips_large)
    t0 = time.perf_counter()
    ts_path = ex.export_torchscript(model, clips[0], tmp / f"{key}.pt")
    t_ts = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx_path = ex.export_onnx(model, clips[0], tmp / f"{key}.onnx", opset=args.opset)
    t_onnx = time.perf_counter() - t0
    formats = {"pytorch": model, "torchscript": ex.load_torchscript(ts_path),
               "onnxruntime": ex.OnnxModel(onnx_path, threads=args.threads),
               "pytorch_int8_linear": ex.quantize_dynamic_int8(model)}
    parity = {fmt: ex.parity(model, m, clips, format=fmt, atol=args.atol).to_dict()
              for fmt, m in formats.items() if fmt != "pytorch"}
    shape = (1, 3, view.frames, view.crop_size, view.crop_size)
    latency = ex.latency_ms(formats, shape, threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    return {"model": name, "overrides": overrides, "view": view.model_dump(), "num_classes": num_classes,
            "params": count_params(model), "input": list(shape), "clips": sum(c.shape[0] for c in clips),
            "export_s": {"torchscript": t_ts, "onnx": t_onnx},
            "file_mb": {"torchscript": ts_path.stat().st_size / 1e6, "onnx": onnx_path.stat().st_size / 1e6},
            "parity": parity, "latency_ms": latency,
            "latency_ratio_to_pytorch": {k: v / latency["pytorch"] for k, v in latency.items()}}


def table(results: dict) -> str:
    lines = ["| model (input) | format | max abs logit diff | top-1 agreement | latency ms (median) | x PyTorch |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results["models"].values():
        label = f"{r['model']} ({'x'.join(str(s) for s in r['input'][2:])}, {r['params'] / 1e6:.2f}M params)"
        for fmt, ms in r["latency_ms"].items():
            p = r["parity"].get(fmt)
            diff = "reference" if p is None else f"{p['max_abs_diff']:.2g}"
            agree = "" if p is None else f"{p['top1_agreement']:.3f} ({p['n']} clips)"
            ratio = r["latency_ratio_to_pytorch"][fmt]
            lines.append(f"| {label} | {fmt} | {diff} | {agree} | {ms:.1f} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="student,x3d_s", help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--manifest", default=str(ROOT / "data/default/manifest.parquet"))
    p.add_argument("--clips", type=int, default=64, help="test clips for the student's parity")
    p.add_argument("--clips-large", type=int, default=16, help="test clips for X3D-S's parity")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--opset", type=int, default=ex.DEFAULT_OPSET)
    p.add_argument("--atol", type=float, default=ex.DEFAULT_ATOL)
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest, source = load_manifest(Path(args.manifest), tmp)
        test = manifest[manifest["split"] == "test"].reset_index(drop=True)
        results = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": cpu_model(),
                   "torch": torch.__version__, "threads": args.threads, "warmup": args.warmup,
                   "repeats": args.repeats, "opset": args.opset, "clips_from": source,
                   "command": "bench/export.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "models": {}}
        try:
            import onnxruntime

            results["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            pass
        for key in [k.strip() for k in args.models.split(",") if k.strip()]:
            results["models"][key] = measure(key, test, num_classes_of(manifest), args, tmp)
            print(f"{key}: done", file=sys.stderr, flush=True)
    print(f"{results['date']}, {results['machine']}, torch {results['torch']}, onnxruntime "
          f"{results.get('onnxruntime')}, {args.threads} thread(s), median of {args.repeats} after {args.warmup} "
          f"warm-up, opset {args.opset}, clips: {source}")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
