"""Runs tasks in worker processes, each with a fixed torch thread count (the study's figures are
recorded with their thread count because float results depend on it), and reports each model's
epochs as they end (a study runs for hours: its log shows where it is)."""
from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from bench.methods import log
from dtkd.eval.complexity import fixed_threads


def set_threads(threads: int) -> None:
    """Worker initializer (spawned processes: no OpenMP state inherited from a forked parent)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


threads_in_process = fixed_threads  # the core's: pinned for the block, then restored


def _indexed(item: tuple[int, Callable[[Any], Any], Any]) -> tuple[int, Any]:
    i, fn, payload = item
    return i, fn(payload)


def run_tasks(fn: Callable[[Any], Any], payloads: Sequence[Any], *, jobs: int, threads: int) -> Iterator[tuple[int, Any]]:
    """Yield (index, fn(payload)) as tasks finish. ``jobs`` == 1 runs them here, in order (no
    process start-up; what the tests use); more runs them in that many spawned processes, which
    are terminated if the caller stops (an error, Ctrl-C): no orphan keeps training.
    ``fn`` must be a module-level function of an importable module."""
    if not payloads:
        return
    if jobs <= 1 or len(payloads) == 1:
        with threads_in_process(threads):
            for i, payload in enumerate(payloads):
                yield i, fn(payload)
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(processes=min(jobs, len(payloads)), initializer=set_threads, initargs=(threads,))
    try:
        yield from pool.imap_unordered(_indexed, [(i, fn, p) for i, p in enumerate(payloads)])
        pool.close()
    finally:
        pool.terminate()
        pool.join()


class EpochLog:
    """Trainer callback: one log line per finished epoch (val top-1 and epoch time)."""

    def __init__(self, name: str, epochs: int) -> None:
        self.name, self.epochs, self.t0 = name, epochs, time.perf_counter()

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        val = metrics.get("val_top1")
        val_text = "" if val is None else f", val top-1 {100 * val:.1f}%"
        log(f"{self.name}: epoch {epoch + 1}/{self.epochs}{val_text} ({time.perf_counter() - self.t0:.0f} s so far)")
