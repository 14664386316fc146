"""DDP plumbing: process-group set-up from torchrun's environment and metric reduction.

Everything here degrades to a no-op in a single process, so the Trainer has one code path.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current() -> DistInfo:
    """The process group this process is in (a single-process DistInfo when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(device: str | None = None, timeout_s: float = 1800) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    NCCL when training on CUDA, gloo on CPU. Without torchrun's variables this is a
    plain single process. Returns the process info and the device this rank trains on.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world} but {missing} not set: launch with torchrun")
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": dev} if use_cuda else {}),
        )
    return current(), dev


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_sums(sums: Mapping[str, float | torch.Tensor], device: torch.device) -> dict[str, float]:
    """Sum every value over all ranks in one collective.

    Metrics are reduced as SUMS (loss * n, correct, n) and divided afterwards, so a mean
    over ranks with unequal counts is still the exact global mean.
    """
    keys = sorted(sums)
    if not keys:
        return {}
    vec = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device).reshape(()) for k in keys])
    if current().enabled:
        dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    return dict(zip(keys, vec.tolist()))


def all_true(flag: bool | torch.Tensor, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank, so all ranks take the same branch."""
    t = torch.as_tensor(flag, device=device).to(torch.int32).reshape(())
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (used to checkpoint each rank's RNG state)."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
