"""One training step of the embedded default's models in two memory layouts: contiguous
(NCTHW) and channels_last_3d (NTHWC), the ratio measured in one process.

On CPU, PyTorch runs a depthwise 3D convolution (X3D's 3x3x3 stage convs) in NCTHW through its
slow reference kernels (``slow_conv3d_forward``, and a backward that dominates the step); in
channels_last_3d oneDNN takes them. ``training.channels_last`` in configs/default.yaml follows
this measurement (docs/benchmarks.md).

The models are the default config's (``x3d_tiny`` student, ``x3d_tiny_m`` CNN teacher,
``mvit_tiny`` ViT teacher, each at its view of the default config), a batch of 8, AdamW, cross
entropy. Layouts alternate over rounds (so load from other processes spreads over both); the
first steps of each round are warm-up; the step time is the median. The LAST line is one JSON
object: {model: {"contiguous_s", "channels_last_s", "speedup"}, "threads", "cpu", "torch"}.

    OMP_NUM_THREADS=1 python bench/memory_format.py            # ~2 min on a 2-core CPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.methods import cpu_model  # noqa: E402
from dtkd.config import load_config  # noqa: E402
from dtkd.models import build  # noqa: E402

ROLES = ("student", "cnn_teacher", "vit_teacher")


def step_seconds(model: nn.Module, clip: torch.Tensor, labels: torch.Tensor, *, steps: int, warmup: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(clip), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def measure(name: str, overrides: dict, view, *, batch: int, steps: int, rounds: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = build(name, num_classes=6, **overrides)
    clip = torch.randn(batch, 3, view.frames, view.crop_size, view.crop_size)
    labels = torch.arange(batch) % 6
    layouts = {"contiguous": (torch.contiguous_format, clip),
               "channels_last": (torch.channels_last_3d, clip.contiguous(memory_format=torch.channels_last_3d))}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for r in range(rounds):
        for layout in (list(layouts) if r % 2 == 0 else list(reversed(layouts))):
            fmt, x = layouts[layout]
            model = model.to(memory_format=fmt)
            times[layout] += step_seconds(model, x, labels, steps=steps, warmup=warmup)
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out["speedup"] = out["contiguous_s"] / out["channels_last_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per layout and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = load_config(args.config).models
    result: dict = {}
    for role in ROLES:
        ref = getattr(models, role)
        overrides = {**ref.overrides, "frames": ref.view().frames, "crop_size": ref.crop_size}
        result[f"{role}:{ref.name}"] = r = measure(ref.name, overrides, ref.view(), batch=args.batch, steps=args.steps,
                                                  rounds=args.rounds, warmup=args.warmup)
        print(f"{role} {ref.name}: contiguous {r['contiguous_s'] * 1e3:.0f} ms, channels_last "
              f"{r['channels_last_s'] * 1e3:.0f} ms per step of {args.batch} clips -> x{r['speedup']:.2f}", file=sys.stderr)
    result.update(threads=args.threads, batch=args.batch, cpu=cpu_model(), torch=torch.__version__)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
