"""Model cost: parameter count and FLOPs as fvcore counts them (one fused multiply-add = 1 FLOP,
the convention of the model zoos' "GFLOPs")."""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count pinned to ``threads`` for the block, then restored: the count
    changes CPU latency several-fold, so models compared on time must run at the same one."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_ms(predictors: Sequence[Callable[[torch.Tensor], Any]], inputs: Sequence[torch.Tensor], *,
               warmup: int = 1, repeats: int = 5, threads: Optional[int] = None) -> list[float]:
    """Median wall-clock milliseconds of one call of each predictor on its input, timed interleaved
    (A, B, A, B, ...) so a busy neighbour slows every predictor alike, at ``threads`` torch threads
    (None: as set). ``nn.Module`` predictors run in eval mode and get their mode back; CUDA work is
    synchronised around each call. The one timer of the evaluate step, the gate and the exporter."""
    if len(predictors) != len(inputs):
        raise ValueError(f"{len(predictors)} predictors but {len(inputs)} inputs")
    cuda = any(x.is_cuda for x in inputs)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    modules = [m for m in predictors if isinstance(m, nn.Module)]
    modes = [m.training for m in modules]
    times: list[list[float]] = [[] for _ in predictors]
    try:
        with fixed_threads(threads or torch.get_num_threads()), torch.inference_mode():
            for m in modules:
                m.eval()
            for i in range(warmup + repeats):
                for k, (predict, x) in enumerate(zip(predictors, inputs)):
                    sync()
                    t0 = time.perf_counter()
                    predict(x)
                    sync()
                    if i >= warmup:
                        times[k].append((time.perf_counter() - t0) * 1000.0)
    finally:
        for m, was_training in zip(modules, modes):
            m.train(was_training)
    return [float(statistics.median(t)) for t in times]


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    # Parameters shared between modules are counted once (model.parameters() deduplicates).
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """GFLOPs of one forward pass at `input_shape`: (C, T, H, W) for one clip, or (B, C, T, H, W).

    Runs on the model's device in eval mode under no_grad and restores the training flag.
    Operators fvcore has no formula for (element-wise ops, pooling, softmax) count as zero."""
    with warnings.catch_warnings():  # fvcore's import trips torch.jit.script's deprecation warning
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis  # imported here: optional on torch-only GPU boxes

    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = (1, *shape)
    if len(shape) != 5:
        raise ValueError(f"input_shape must be (C, T, H, W) or (B, C, T, H, W), got {tuple(input_shape)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    # fvcore logs one warning per unsupported operator and per uncalled module; they say nothing
    # about the count's correctness here, so they are silenced for the duration of the trace.
    fv_log = logging.getLogger("fvcore")
    level = fv_log.level
    fv_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, torch.zeros(shape, device=device))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = analysis.total()
    finally:
        fv_log.setLevel(level)
        model.train(was_training)
    return total / 1e9


def inference_cost(model: nn.Module, input_shape: Sequence[int], *, flops: bool = True, warmup: int = 1,
                   repeats: int = 5, device: str = "cpu") -> dict[str, float]:
    """What one clip costs at inference: ``params``, ``gflops`` (fvcore; left out with
    ``flops=False``) and ``latency_ms`` (median of ``repeats`` forwards after ``warmup``). The one
    measurement the evaluate step, the promotion gate and the benchmarks share."""
    model = model.eval().to(device)
    cost = {"params": float(count_params(model))}
    if flops:
        cost["gflops"] = float(count_flops(model, input_shape))
    clip = torch.zeros(tuple(input_shape), device=device)
    cost["latency_ms"] = latency_ms([model], [clip], warmup=warmup, repeats=repeats)[0]
    return cost
