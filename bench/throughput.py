"""Training-step cost of distillation relative to training the student alone.

Four configurations, all with the REAL paper-scale architectures from ``dtkd.models``
(X3D-S student, X3D-M CNN teacher, MViTv2-S ViT teacher) and the real Trainer loop:

  ce           student alone, cross-entropy (distiller method ``none``)
  kd_online    KD from one online teacher (the ViT, the paper's single-teacher baseline)
  dtkd_online  DT-KD (SR + SD with the SDB + RKD) with both teachers run every step
  dtkd_cached  DT-KD with teacher outputs from a TeacherCache: only the student runs

A step is everything between two ``on_step_end`` callbacks of ``Trainer.fit``: collate,
host-to-device copy, cache lookup, forward, loss, backward, clipping check, optimiser step.
The configurations are measured in ONE process, interleaved over rounds in rotating order
(so load from other processes spreads evenly over them); each fit's first step is warm-up
and not counted; the reported step time is the median. Process CPU time per step is
reported too: on a shared CPU it is the measure that other processes cannot inflate.

On CPU the clips are reduced (8 frames, student 64^2, teachers 96^2, batch 4; ``--quick``
also uses one thread and stops adding rounds at a 240 s budget);
on CUDA they are the models' standard inputs (X3D-S 13x160^2, X3D-M and MViTv2-S 16x224^2)
in bf16 with the largest batch (power of two) at which DT-KD-online fits, and the peak GPU
memory of each configuration is reported. The LAST line printed is one JSON object:
{"ce": 1.0, "kd_online": r, "dtkd_online": r, "dtkd_cached": r, ...details}.

    python bench/throughput.py --quick            # < 5 min on a 2-core CPU
    python bench/throughput.py --device cuda      # full size on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtkd import models  # noqa: E402
from dtkd.data import STUDENT_VIEW  # noqa: E402
from dtkd.distill import DistillConfig, TeacherCache, TeacherRef, build_distiller  # noqa: E402
from dtkd.engine import Trainer, TrainConfig  # noqa: E402
from dtkd.engine.sampling import SeededViews, derive_seed  # noqa: E402

CONFIGS = ("ce", "kd_online", "dtkd_online", "dtkd_cached")
NAMES = {STUDENT_VIEW: "x3d_s", "cnn": "x3d_m", "vit": "mvit_v2_s"}
NUM_CLASSES = 51  # HMDB51


class PoolClips(Dataset):
    """``n`` items drawn from a fixed pool of random clips (one per batch slot), so data
    preparation costs the same collate + copy in every configuration and nothing else."""

    def __init__(self, n: int, shapes: dict[str, tuple[int, int]], pool: int, seed: int = 0) -> None:
        self.n = n
        # One generator per view name: the student's clips are the same in every configuration.
        gen = lambda v: torch.Generator().manual_seed(derive_seed(seed, zlib.crc32(v.encode())))  # noqa: E731
        self.pool = {v: torch.randn(pool, 3, t, s, s, generator=gen(v)) for v, (t, s) in shapes.items()}
        self.size = pool
        self.key = f"pool:{n}:{pool}:{seed}:{sorted(shapes.items())}"

    def __len__(self) -> int:
        return self.n

    def content_key(self) -> str:
        return self.key

    def with_views(self, names) -> "PoolClips":
        """The same items with only the views ``names`` (what a cached-teacher run renders)."""
        subset = PoolClips.__new__(PoolClips)
        subset.n, subset.size, subset.key = self.n, self.size, self.key
        subset.pool = {v: self.pool[v] for v in names}
        return subset

    def __getitem__(self, i: int) -> dict:
        return {"inputs": {v: p[i % self.size] for v, p in self.pool.items()}, "label": i % NUM_CLASSES, "index": i}


class StepClock:
    """Wall-clock and process-CPU time stamps at the end of every optimiser step (after the
    device has finished). CPU time is the contention-proof cross-check on a shared CPU: it
    counts only this process's work, not the time it waited for a core."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.wall, self.cpu = device, [], []

    def on_step_end(self, step: int, metrics: dict) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        pass

    @staticmethod
    def intervals(stamps: list[float]) -> list[float]:
        return [b - a for a, b in zip(stamps, stamps[1:])]  # the first step is warm-up


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small CPU run (< 5 min on 2 cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, the largest that fits on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration and round")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="CPU: frames of every view")
    p.add_argument("--student-crop", type=int, default=None)
    p.add_argument("--teacher-crop", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --quick on CPU, else torch's default)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop adding rounds when the next would end past this (default 240 with --quick)")
    return p.parse_args(argv)


def view_shapes(args, device: torch.device) -> dict[str, tuple[int, int]]:
    if device.type == "cuda" and args.frames is None:  # the models' standard inputs
        return {v: (models.get_spec(m).frames, models.get_spec(m).crop_size) for v, m in NAMES.items()}
    t = args.frames or 8
    s_crop, t_crop = args.student_crop or 64, args.teacher_crop or 96
    return {STUDENT_VIEW: (t, s_crop), "cnn": (t, t_crop), "vit": (t, t_crop)}


def build_distillers(shapes, device) -> dict[str, torch.nn.Module]:
    """One distiller per configuration; students start from the same weights, teachers are shared."""
    specs = {v: models.get_spec(m).with_input(frames=shapes[v][0], crop_size=shapes[v][1]) for v, m in NAMES.items()}
    teachers = {v: models.build(NAMES[v], NUM_CLASSES, frames=shapes[v][0], crop_size=shapes[v][1]).eval()
                for v in ("cnn", "vit")}
    refs = [TeacherRef(v, teachers[v], specs[v], v) for v in ("cnn", "vit")]
    out = {}
    for kind in CONFIGS:
        torch.manual_seed(0)
        student = models.build(NAMES[STUDENT_VIEW], NUM_CLASSES, frames=shapes[STUDENT_VIEW][0],
                               crop_size=shapes[STUDENT_VIEW][1])
        method = {"ce": "none", "kd_online": "kd"}.get(kind, "dtkd")
        out[kind] = build_distiller(DistillConfig(method=method), student, specs[STUDENT_VIEW], refs if method != "none" else [])
    return out


def largest_batch(distiller, shapes, device, cap: int = 256) -> int:
    """Largest power-of-two batch at which one DT-KD-online training step fits in memory."""
    best, b = 0, 2
    while b <= cap:
        try:
            x = {v: torch.randn(b, 3, t, s, s, device=device).contiguous(memory_format=torch.channels_last_3d)
                 for v, (t, s) in shapes.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = distiller(x, torch.zeros(b, dtype=torch.long, device=device))
            out.loss.backward()
            best = b
            b *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            distiller.zero_grad(set_to_none=True)
            x = out = None
            torch.cuda.empty_cache()
    if not best:
        raise RuntimeError("not even a batch of 2 fits for DT-KD online")
    return best


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    threads = args.threads or (1 if args.quick and device.type == "cpu" else None)
    if threads:
        # One thread on a shared CPU: OpenMP teams stall badly when other processes hold
        # the cores, which would measure the neighbours rather than the step.
        torch.set_num_threads(threads)
    budget = args.budget_s or (240.0 if args.quick else float("inf"))
    warnings.filterwarnings("ignore", message="phi_CNN fitted")  # one-batch phi fit: fine for timing
    on_gpu = device.type == "cuda"
    shapes = view_shapes(args, device)
    steps = args.steps or (5 if args.quick or not on_gpu else 10)
    rounds = args.rounds or (4 if args.quick or not on_gpu else 3)
    load0 = os.getloadavg()
    t_start = time.perf_counter()

    distillers = build_distillers(shapes, device)
    for d in distillers.values():
        d.to(device)
        if on_gpu:  # as the Trainer will run them
            d.to(memory_format=torch.channels_last_3d)
    # DT-KD's closed-form phi is fitted once, on a few clips: its values do not matter for timing.
    few = {v: x.to(device) for v, x in PoolClips(4, shapes, pool=4, seed=1).pool.items()}
    for kind in ("dtkd_online", "dtkd_cached"):
        distillers[kind].prepare([{"inputs": few}])
    batch = args.batch or (largest_batch(distillers["dtkd_online"], shapes, device) if on_gpu else 4)
    n = batch * (steps + 1)
    full = PoolClips(n, shapes, pool=batch)
    # Each configuration loads only the views it uses, as a real run would render only those; the
    # cached one is given every view, as in a run, and its plan renders the student's alone.
    needs = {"ce": (STUDENT_VIEW,), "kd_online": (STUDENT_VIEW, "vit"), "dtkd_online": (STUDENT_VIEW, "cnn", "vit"),
             "dtkd_cached": (STUDENT_VIEW, "cnn", "vit")}
    data = {k: PoolClips(n, {v: shapes[v] for v in views}, pool=batch) for k, views in needs.items()}
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.01, milestones=[], log_every=1, grad_clip=10.0,
                      amp="auto", seed=0, num_workers=0)

    t0 = time.perf_counter()
    cache_dir = tempfile.mkdtemp(prefix="dtkd-bench-cache-")
    cache = TeacherCache.build(distillers["dtkd_cached"], SeededViews(full, seed=cfg.seed), cache_dir, num_views=1,
                               batch_size=batch, device=device, amp_dtype=torch.bfloat16 if on_gpu else None)
    cache_s = time.perf_counter() - t0
    distillers["dtkd_cached"].teacher_cache = cache  # its setup takes the teachers' outputs from here

    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    cpu_times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    memory: dict[str, float] = {}
    for r in range(rounds):
        t_round = time.perf_counter()
        order = CONFIGS[r % 4:] + CONFIGS[: r % 4]  # rotate: no configuration always runs first
        for kind in order:
            clock = StepClock(device)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
            trainer = Trainer(distillers[kind], cfg, device=device, callbacks=[clock], progress=False)
            trainer.fit(data[kind])
            times[kind] += clock.intervals(clock.wall)
            cpu_times[kind] += clock.intervals(clock.cpu)
            if on_gpu:
                memory[kind] = max(memory.get(kind, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
        elapsed, last = time.perf_counter() - t_start, time.perf_counter() - t_round
        if r + 1 < rounds and elapsed + 1.2 * last > budget:
            print(f"stopping after {r + 1} rounds: the next would end past the {budget:.0f} s budget", file=sys.stderr)
            break

    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
    ratios = {k: round(med[k] / med["ce"], 3) for k in CONFIGS}
    report = {
        **ratios,
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "batch": batch,
        "views": {v: f"{t}x{s}x{s}" for v, (t, s) in shapes.items()},
        "amp": "bf16" if on_gpu else "off",
        "step_s": {k: round(v, 4) for k, v in med.items()},
        "step_s_spread": {k: [round(min(v), 4), round(max(v), 4)] for k, v in times.items()},
        "cpu_step_s": {k: round(v, 4) for k, v in cpu_med.items()},
        "cpu_time_ratios": {k: round(cpu_med[k] / cpu_med["ce"], 3) for k in CONFIGS},
        "clips_per_s": {k: round(batch / v, 2) for k, v in med.items()},
        "timed_steps": {k: len(v) for k, v in times.items()},
        "cache_build_s": round(cache_s, 2),
        "cache_mib": round(cache.nbytes() / 2**20, 2),
        "gpu_mem_gib": {k: round(v, 2) for k, v in memory.items()} or None,
        "loadavg_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - t_start, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print("| configuration | step (s, median) | clips/s | x student step | CPU s/step | x (CPU time) |"
          + (" peak GPU GiB |" if on_gpu else ""))
    print("|---|---|---|---|---|---|" + ("---|" if on_gpu else ""))
    for k in CONFIGS:
        row = (f"| {k} | {med[k]:.3f} | {batch / med[k]:.2f} | {ratios[k]:.2f} | {cpu_med[k]:.3f} | "
               f"{cpu_med[k] / cpu_med['ce']:.2f} |")
        print(row + (f" {memory[k]:.1f} |" if on_gpu else ""))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
