"""How much dtkd.engine.conv_grad saves: training-step time of the embedded models with PyTorch's
Conv3d backward and with the input gradient computed by the forward kernel, in one process, as a
ratio; plus the per-layer split for the student's depthwise layers.

    python bench/conv_grad.py [--threads 1] [--steps 10]

Prints one JSON object per model and layer (results in docs/benchmarks.md, "Conv3d gradients").
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.methods import cpu_model  # noqa: E402
from dtkd.engine.conv_grad import input_grad, use_fast_conv_grad  # noqa: E402
from dtkd.models.registry import build, get_spec  # noqa: E402

# The embedded default's models at its 32^2 clip (configs/default.yaml).
MODELS = {
    "x3d_tiny (student)": ("x3d_tiny", {"spatial_strides": [2, 2, 2, 1], "crop_size": 32}, 8),
    "x3d_tiny_m (CNN teacher)": ("x3d_tiny_m", {"spatial_strides": [2, 2, 2, 1], "crop_size": 32}, None),
    "mvit_tiny (ViT teacher)": ("mvit_tiny", {"stem": "conv", "crop_size": 32}, None),
}


def timed(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def step_time(model, x, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters())

    def step():
        model(x).logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad()
    return timed(step, steps)


def bench_model(label: str, name: str, overrides: dict, frames, batch: int, steps: int) -> dict:
    spec = get_spec(name, **overrides)
    frames, crop = frames or spec.frames, spec.crop_size
    native = build(name, 6, **{**overrides, "frames": frames}).to(memory_format=torch.channels_last_3d).train()
    fast = copy.deepcopy(native)
    switched = use_fast_conv_grad(fast)
    x = torch.randn(batch, 3, frames, crop, crop).contiguous(memory_format=torch.channels_last_3d)
    t_native = step_time(native, x, steps)
    t_fast = step_time(fast, x, steps)
    return {"model": label, "conv3d_layers": switched, "batch": batch, "input": list(x.shape[1:]),
            "step_ms_native": round(1e3 * t_native, 1), "step_ms_fast": round(1e3 * t_fast, 1),
            "speedup": round(t_native / t_fast, 2)}


def bench_layer(shape, stride: int, steps: int) -> dict:
    """One depthwise 3x3x3 layer: forward, PyTorch's input gradient, ours."""
    c = shape[1]
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(c, 1, 3, 3, 3)
    s = (1, stride, stride)
    y = F.conv3d(x, w, None, s, 1, 1, c)
    g = torch.randn_like(y)
    native = timed(lambda: torch.ops.aten.convolution_backward(
        g, x, w, None, s, (1, 1, 1), (1, 1, 1), False, (0, 0, 0), c, (True, False, False)), steps)
    ours = timed(lambda: input_grad(g, w, x.shape, s, (1, 1, 1), c), steps)
    fwd = timed(lambda: F.conv3d(x, w, None, s, 1, 1, c), steps)
    return {"layer": f"depthwise 3x3x3 stride {stride} on {list(shape)}", "forward_ms": round(1e3 * fwd, 2),
            "input_grad_ms_native": round(1e3 * native, 2), "input_grad_ms_fast": round(1e3 * ours, 2),
            "speedup": round(native / ours, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                      "date": time.strftime("%Y-%m-%d")}))
    for label, (name, overrides, frames) in MODELS.items():
        print(json.dumps(bench_model(label, name, overrides, frames, args.batch, args.steps)), flush=True)
    for shape, stride in (((8, 216, 8, 2, 2), 1), ((8, 108, 8, 4, 4), 2), ((8, 36, 8, 16, 16), 2)):
        print(json.dumps(bench_layer(shape, stride, 5 * args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
