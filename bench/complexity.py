"""Measure every registered model's parameters and FLOPs (fvcore) next to the published figures,
time the CPU-sized models, and write docs/complexity.md.

    OMP_NUM_THREADS=2 .venv/bin/python bench/complexity.py            # everything (~10 min on 2 cores)
    .venv/bin/python bench/complexity.py --no-flops --out /tmp/c.md   # params only (~30 s)
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtkd import models  # noqa: E402
from dtkd.eval.complexity import count_flops, count_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_INPUT = (8, 64)  # frames, crop: the embedded default's clip
TINY_BATCH = 8


@dataclass
class Measured:
    name: str
    params_400: int
    params_51: int
    flops: dict[tuple[int, int], Optional[float]] = field(default_factory=dict)  # (T, S) -> GFLOPs
    seconds: dict[tuple[int, int], float] = field(default_factory=dict)
    errors: dict[tuple[int, int], str] = field(default_factory=dict)


def inputs_for(spec: models.ModelSpec) -> list[tuple[int, int]]:
    """The standard clip plus every distinct clip a published FLOPs figure refers to."""
    out = [(spec.frames, spec.crop_size)]
    for pub in spec.published:
        if pub.gflops is not None and pub.frames and pub.crop_size and (pub.frames, pub.crop_size) not in out:
            out.append((pub.frames, pub.crop_size))
    return out


def measure(name: str, flops: bool) -> Measured:
    spec = models.get_spec(name)
    m = Measured(name, count_params(models.build(name, 400)), count_params(models.build(name, 51)))
    if not flops:
        return m
    for frames, crop in inputs_for(spec):
        # The model is built for the clip it is measured at (MViT's positional grid is fixed).
        model = models.build(name, 400, frames=frames, crop_size=crop)
        start = time.perf_counter()
        try:
            m.flops[(frames, crop)] = count_flops(model, (3, frames, crop, crop))
        except Exception as exc:  # report and go on: params are still worth having
            m.flops[(frames, crop)] = None
            m.errors[(frames, crop)] = f"{type(exc).__name__}: {exc}"[:200]
        m.seconds[(frames, crop)] = time.perf_counter() - start
        print(f"  {name} {frames}x{crop}^2: {m.flops[(frames, crop)]} GFLOPs "
              f"({m.seconds[(frames, crop)]:.1f} s)", flush=True)
    return m


def time_tiny(name: str, threads: int, reps: int = 15) -> dict[str, float]:
    """Seconds of a training step (forward + backward + SGD step, train mode) and of a
    teacher-style forward (eval, no_grad), batch 8 at 8x64^2: best wall time of `reps` after a
    warm-up, and the process CPU time of that run. On a CPU shared with other jobs the wall time
    varies with their load; at one thread the CPU time is what the step costs undisturbed."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = models.build(name, 6)
    x = torch.randn(TINY_BATCH, 3, TINY_INPUT[0], TINY_INPUT[1], TINY_INPUT[1])
    y = torch.randint(0, 6, (TINY_BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    out = {}
    for key, fn, mode in (("train", train_step, True), ("forward", forward, False)):
        model.train(mode)
        fn()  # warm-up (allocator, oneDNN kernel selection)
        runs = []
        for _ in range(reps):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            runs.append((time.perf_counter() - wall, time.process_time() - cpu))
        out[f"{key}_wall"], out[f"{key}_cpu"] = min(runs)
        out[f"{key}_cpu"] = min(c for _, c in runs)
    return out


def fmt(v: Optional[float], nd: int = 2) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def delta(measured: Optional[float], published: Optional[float]) -> str:
    if measured is None or published is None:
        return "—"
    return f"{(measured / published - 1) * 100:+.1f}%"


def paper_rows(results: list[Measured]) -> list[str]:
    rows = [
        "| model | source | clip (T×S²) | params M (400 cls) | published M | Δ | GFLOPs (fvcore) | published G | Δ |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        spec = models.get_spec(m.name)
        p400 = m.params_400 / 1e6
        std = (spec.frames, spec.crop_size)
        for i, pub in enumerate(spec.published or [None]):
            stated = bool(pub and pub.frames and pub.crop_size)
            clip = (pub.frames, pub.crop_size) if stated else std
            g = m.flops.get(clip)
            source = "—" if pub is None else pub.source + (f"; {pub.note}" if pub.note else "")
            name = f"`{m.name}`" if i == 0 else ""
            rows.append(
                f"| {name} | {source} | {clip[0]}×{clip[1]}²{'' if stated else ' ‡'} | {p400:.2f} | {fmt(pub and pub.params_m)} | "
                f"{delta(p400, pub and pub.params_m)} | {fmt(g)} | {fmt(pub and pub.gflops)} | "
                f"{delta(g, pub and pub.gflops)} |"
            )
    return rows


def table8_rows(results: list[Measured]) -> list[str]:
    """The paper's Table 8 models, with params at 400 and at 51 (HMDB51) classes."""
    by_name = {m.name: m for m in results}
    picks = [("MViTv2-S", "mvit_v2_s"), ("Swin-B", "swin3d_b"), ("I3D-R50", "i3d_r50"),
             ("R(2+1)D", "r2plus1d_r34"), ("SlowFast-R50", "slowfast_r50_4x16"), ("X3D-S", "x3d_s"),
             ("MoViNet-A2", "movinet_a2")]
    rows = [
        "| Table 8 model | dtkd name | clip | paper GFLOPs | fvcore GFLOPs | paper params M | "
        "params M, 400 cls | params M, 51 cls |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, name in picks:
        if name not in by_name:
            continue
        m = by_name[name]
        spec = models.get_spec(name)
        pub = next(p for p in spec.published if p.source == "paper Table 8")
        clip = (pub.frames or spec.frames, pub.crop_size or spec.crop_size)
        rows.append(
            f"| {label} | `{name}` | {clip[0]}×{clip[1]}² | {fmt(pub.gflops)} | {fmt(m.flops.get(clip))} | "
            f"{fmt(pub.params_m)} | {m.params_400 / 1e6:.2f} | {m.params_51 / 1e6:.2f} |"
        )
    return rows


def tiny_rows(tiny: dict[str, dict]) -> list[str]:
    rows = [
        "| model | role | params M (6 cls) | GFLOPs / clip | feature C×T×H×W | train step: CPU s (1 thr) | "
        "wall s 1 thr | wall s 2 thr | forward: CPU s (1 thr) | wall s 1 thr | wall s 2 thr |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    roles = {"x3d_tiny": "student", "x3d_tiny_m": "CNN teacher", "mvit_tiny": "ViT teacher"}
    for name, r in tiny.items():
        one, two = r[1], r[2]
        rows.append(
            f"| `{name}` | {roles.get(name, 'alternative')} | {r['params'] / 1e6:.2f} | {r['gflops']:.3f} | "
            f"{r['feature']} | {one['train_cpu']:.3f} | {one['train_wall']:.3f} | {two['train_wall']:.3f} | "
            f"{one['forward_cpu']:.3f} | {one['forward_wall']:.3f} | {two['forward_wall']:.3f} |"
        )
    return rows


def tiny_feature(name: str) -> str:
    spec = models.get_spec(name)
    model = models.build(name, 6).eval()
    with models.FeatureTap(model, spec) as tap, torch.no_grad():
        model(torch.zeros(1, *spec.input_shape))
        return "×".join(map(str, tap.features.shape[1:]))


# (model, frames, crop) values quoted in NOTES, as {model_frames_crop}.
NOTE_VALUES = [("x3d_s", 13, 160), ("x3d_s", 16, 160), ("x3d_s", 13, 182), ("x3d_m", 16, 256),
               ("slow_r50", 8, 224), ("slow_r50", 8, 256), ("r2plus1d_r34", 32, 224), ("r2plus1d_r34", 32, 256),
               ("slowfast_r50_4x16", 32, 256), ("mvit_v2_s", 16, 224), ("swin3d_b", 32, 224),
               ("swin3d_b", 16, 224), ("i3d_r50", 8, 224), ("i3d_r50", 8, 256)]

NOTES = """\
## Reading the tables

* **Params** are exact counts of the built module with a 400-class head; every model is within
  1 % of every published figure (the test suite holds the reference figure to 2 %), except where
  the paper counts a 51-class head (below).
* **FLOPs** are fvcore counts for **one clip (one view), batch 1**; one fused multiply-add counts
  as 1 FLOP, the convention of all the sources here. Multi-view testing (e.g. 3 crops × 10 clips)
  multiplies the cost; the zoos print "FLOPs × views" and the per-view figure is compared. fvcore
  counts convolutions, linear layers, matmuls/einsums and batch-norm (2 FLOPs per element in eval)
  and gives element-wise ops, pooling, softmax and the SE/Swish gating zero cost.
* **Which clip a figure refers to matters more than anything else.** The pytorchvideo and mmaction2
  zoos quote the cost of one **256×256 test view** (3-crop testing at short side 256), not of the
  224×224 training crop: measured at 256², Slow-R50 is {slow_r50_8_256} G (zoo 54.52; {slow_r50_8_224} G
  at 224²), I3D-R50 {i3d_r50_8_256} G (37.53; {i3d_r50_8_224} G at 224²) and R(2+1)D-34
  {r2plus1d_r34_32_256} G (213; {r2plus1d_r34_32_224} G at 224²). torchvision quotes Swin3D at 16 frames
  ({swin3d_b_16_224} G for Swin-B), the Video Swin paper at 32 ({swin3d_b_32_224} G).
* **X3D**: PySlowFast's X3D table is at the training crop and counts convolutions and the
  classifier only; fvcore adds batch-norm (X3D-S 13×160²: {x3d_s_13_160} G, which fvcore's
  per-operator split gives as 1.96 G of conv + linear, exactly PySlowFast's figure, + 0.07 G of
  batch-norm). pytorchvideo's X3D figures are ~5 % above
  fvcore at the X3D test crops (X3D-S 13×182²: {x3d_s_13_182} G vs 2.96; X3D-M 16×256²: {x3d_m_16_256} G
  vs 6.72); the zoo does not say how it counted.
* **Paper Table 8, decoded.** MViTv2-S 64.45 G is the 16×224² model exactly (fvcore
  {mvit_v2_s_16_224} G; torchvision quotes 64.22). Swin-B 282 G is Video Swin-B at 32×224²
  ({swin3d_b_32_224} G). SlowFast-R50 36.10 G / 34.40 M is the **4×16** model (`slowfast_r50_4x16`,
  {slowfast_r50_4x16_32_256} G per 256² view; the SlowFast paper's figure), not the 8×8 model
  (`slowfast_r50`, 65.7 G). R(2+1)D 213 G / 63.58 M is **R(2+1)D-34 on 32-frame clips**
  (`r2plus1d_r34`, mmaction2's r2plus1d_r34 32x2x1), not pytorchvideo's bottleneck R(2+1)D-R50
  (28.11 M). X3D-S 2.45 G is X3D-S on the paper's 16-frame clips (fvcore 16×160²: {x3d_s_16_160} G,
  batch-norm included); its 3.76 M is the X3D paper's 400-class count (pytorchvideo's build:
  3.79 M, +0.9 %). I3D-R50 27.33 M is exactly pytorchvideo's I3D-R50 with a **51-class** (HMDB51)
  head; its 33.27 G matches neither the 224² ({i3d_r50_8_224} G) nor the 256² ({i3d_r50_8_256} G) 8-frame
  clip, and the paper does not say which I3D it ran.
* **MoViNet-A2** 3.85 G is the released A2 (`movinet_a2`) on 16×224² clips exactly (fvcore
  3.85 G). Its 4.80 M is the MoViNet paper's **600-class** count, which the released A2 does not
  reproduce: 5.25 M at 600 classes (+9.4 %); the 400-class build's 4.84 M sits near 4.80 only
  by head size. The MoViNet paper's 10.3 G at 50×224² is its own A2 table (fvcore: 12.02 G, of
  which convolutions 11.56 G). See [models.md](models.md#movinet-a2).
"""


def provenance(argv: list[str], seconds: float) -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return [
        f"* Command: `OMP_NUM_THREADS=2 .venv/bin/python bench/complexity.py{' ' + ' '.join(argv) if argv else ''}`",
        f"* Machine: {cpu}, {len(os.sched_getaffinity(0))}-core CPU, no GPU, shared with other jobs "
        f"(load average at the end: {load})",
        f"* Date: {dt.date.today().isoformat()}; torch {torch.__version__}; commit {commit} plus the working tree; "
        f"run time {seconds:.0f} s",
    ]


def paper_section(names: list[str], flops: bool, argv: list[str]) -> list[str]:
    started = time.perf_counter()
    results = []
    for name in names:
        print(name, flush=True)
        results.append(measure(name, flops=flops))
    by = {m.name: m for m in results}

    def g(name: str, clip: tuple[int, int]) -> str:
        return fmt(by[name].flops.get(clip)) if name in by else "—"

    lines = [
        "## Paper-scale models (400-class head, one clip, batch 1)",
        "",
        *provenance(argv, time.perf_counter() - started),
        "",
        *paper_rows(results),
        "",
        "‡ the source does not state the clip its FLOPs refer to; measured at the model's standard clip.",
        "",
        "## The paper's Table 8, model by model",
        "",
        *table8_rows(results),
        "",
        NOTES.format(**{f"{n}_{t}_{c}": g(n, (t, c)) for n, t, c in NOTE_VALUES}),
    ]
    failures = [(m.name, clip, err) for m in results for clip, err in m.errors.items()]
    if failures:
        lines += ["## FLOPs fvcore could not count", ""]
        lines += [f"* `{n}` at {c[0]}×{c[1]}²: {e}" for n, c, e in failures]
        lines.append("")
    return lines


def tiny_section(argv: list[str]) -> list[str]:
    started = time.perf_counter()
    preferred = ["x3d_tiny", "x3d_tiny_m", "mvit_tiny"]
    names = preferred + [n for n in models.list_models() if models.get_spec(n).scale == "tiny" and n not in preferred]
    tiny: dict[str, dict] = {}
    for name in names:
        spec = models.get_spec(name)
        r: dict = {"params": count_params(models.build(name, 6)),
                   "gflops": count_flops(models.build(name, 6), spec.input_shape),
                   "feature": tiny_feature(name)}
        for threads in (1, 2):
            r[threads] = time_tiny(name, threads)
        tiny[name] = r
        print(f"  {name}: {r}", flush=True)
    return [
        "## CPU-sized models (embedded default and tests)",
        "",
        *provenance(argv, time.perf_counter() - started),
        "",
        f"Clip 3×{TINY_INPUT[0]}×{TINY_INPUT[1]}², batch {TINY_BATCH}, 6 classes. *Train step* = forward + "
        "cross-entropy backward + SGD step in train mode; *forward* = eval mode under no_grad (how a "
        "frozen teacher runs). Best of 15 after one warm-up. The machine is shared with other jobs "
        "(load average above), so wall times are upper bounds; the one-thread CPU time is the "
        "undisturbed cost of the step. While another job holds one of the two cores, two threads are "
        "slower than one: every parallel region waits for the descheduled thread.",
        "",
        *tiny_rows(tiny),
        "",
    ]


def _section(name: str, lines: list[str]) -> str:
    return f"<!-- section:{name} -->\n" + "\n".join(lines) + f"\n<!-- /section:{name} -->\n"


def _kept(text: str, name: str) -> str:
    m = re.search(rf"<!-- section:{name} -->.*?<!-- /section:{name} -->\n", text, re.S)
    return m.group(0) if m else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "complexity.md")
    ap.add_argument("--only", choices=["paper", "tiny"], help="regenerate one section, keep the other")
    ap.add_argument("--models", nargs="*", help="paper-scale models to measure (default: all)")
    ap.add_argument("--no-flops", action="store_true", help="parameters only")
    args = ap.parse_args()
    argv = sys.argv[1:]

    old = args.out.read_text() if args.out.exists() else ""
    sections = {}
    if args.only in (None, "paper"):
        names = args.models or [n for n in models.list_models() if models.get_spec(n).scale == "paper"]
        sections["paper"] = _section("paper", paper_section(names, not args.no_flops, argv))
    if args.only in (None, "tiny"):
        sections["tiny"] = _section("tiny", tiny_section(argv))
    body = "".join(sections.get(name) or _kept(old, name) for name in ("paper", "tiny"))
    header = "# Model complexity: measured vs published\n\nGenerated by `bench/complexity.py`; do not edit by hand.\n\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + body)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
