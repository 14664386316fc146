"""Cached teachers: run each frozen teacher once per (clip, augmented view), then train the
student alone.

Teachers are fixed during distillation (paper §4.2), so their outputs on a given view never
change. The cache stores, per teacher, every tensor ``distiller.teacher_forward`` returns
(logits and the aligned features) for ``num_views`` views of every clip, as fp16 ``.npy``
files that are memory-mapped on lookup. The view itself is reproducible: ``SeededViews``
renders item ``(index, view_id)`` from RNGs seeded by (seed, index, view_id), and the
Trainer's ``EpochSampler`` only draws view ids below ``num_views``, so the student always
sees exactly the view its teachers' outputs were computed on.

Layout of ``directory``: ``<teacher>.<field>.npy`` with shape (num_items, num_views, ...),
and ``meta.json`` (written last: a directory without it is an unfinished build).

:func:`cached_plan` is how a distiller uses it in ``setup``: build (or reuse) the cache, then
train on the student's view alone, with the cached outputs handed to every step.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dtkd.data.views import STUDENT_VIEW
from dtkd.engine import distributed as D
from dtkd.engine.contract import RunContext, TrainPlan
from dtkd.engine.sampling import SeededViews, ViewKey
from dtkd.fsutil import naming_disk_full, one_writer

log = logging.getLogger(__name__)
FORMAT = 2  # 2: keyed on the dataset content and the output shapes


def teacher_fingerprint(distiller: nn.Module) -> str:
    """Digest of the frozen parameters (the teachers): a cache of other weights is stale."""
    h = hashlib.blake2b(digest_size=12)
    for name, p in distiller.named_parameters():
        if not p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Read side: ``lookup(indices, view_ids)`` -> {teacher: {field: float32 tensor}}."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.dir} holds no finished teacher cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: cache format {self.meta.get('format')}, expected {FORMAT}")
        self.num_items: int = self.meta["num_items"]
        self.num_views: int = self.meta["num_views"]
        self.seed: int = self.meta["seed"]
        self.arrays = {
            t: {f: np.load(self.dir / f"{t}.{f}.npy", mmap_mode="r") for f in fields}
            for t, fields in self.meta["teachers"].items()
        }
        for t, fields in self.meta["teachers"].items():
            for f, shape in fields.items():
                expected = (self.num_items, self.num_views, *shape)
                if self.arrays[t][f].shape != expected:
                    raise ValueError(f"{self.dir / f'{t}.{f}.npy'}: shape {self.arrays[t][f].shape}, meta.json says "
                                     f"{expected}: a damaged teacher cache; delete {self.dir} to rebuild it")

    @property
    def teachers(self) -> list[str]:
        return list(self.arrays)

    def lookup(self, indices: Any, view_ids: Any, device: str | torch.device = "cpu") -> dict[str, dict[str, torch.Tensor]]:
        idx = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64)
        vid = np.asarray(torch.as_tensor(view_ids).cpu(), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_items or vid.min() < 0 or vid.max() >= self.num_views):
            raise IndexError(f"cache holds {self.num_items} clips x {self.num_views} views; asked for "
                             f"indices {idx.min()}..{idx.max()}, views {vid.min()}..{vid.max()}")
        out: dict[str, dict[str, torch.Tensor]] = {}
        for t, fields in self.arrays.items():
            out[t] = {}
            for f, arr in fields.items():
                # Fancy indexing copies just these rows out of the memory map.
                rows = torch.from_numpy(np.ascontiguousarray(arr[idx, vid]))
                out[t][f] = rows.to(device, non_blocking=True).float()
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for fields in self.arrays.values() for a in fields.values())

    # ----------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        distiller: nn.Module,
        dataset: SeededViews,
        directory: str | Path,
        *,
        num_views: int,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        amp_dtype: torch.dtype | None = None,
        num_workers: int = 0,
        collate_fn=None,
        channels_last: bool = False,
        progress: bool = False,
    ) -> "TeacherCache":
        """Compute (or reuse) the cache for ``dataset``'s clips x ``num_views`` views.

        Reused only when ``directory`` holds a finished cache of the same content: the same
        ``dataset.content_key()`` (the clips' ids, labels and bytes, every view, the augmentation
        knobs, the view seed), views per clip, teacher weights, and per-clip output shapes;
        otherwise it is rebuilt, and the log says what changed. Under DDP every rank computes its
        share of the keys into the same memory-mapped files.
        """
        if not isinstance(dataset, SeededViews):
            raise TypeError("build the cache from a SeededViews dataset so that views are reproducible")
        if num_views < 1:
            raise ValueError("num_views must be >= 1")
        directory = Path(directory)
        with _one_builder(directory), naming_disk_full(directory, "the teacher cache"), _no_leftovers(directory):
            return cls._build(distiller, dataset, directory, num_views=num_views, batch_size=batch_size,
                              device=device, amp_dtype=amp_dtype, num_workers=num_workers, collate_fn=collate_fn,
                              channels_last=channels_last, progress=progress)

    @classmethod
    def _build(cls, distiller, dataset: SeededViews, directory: Path, *, num_views, batch_size, device, amp_dtype,
               num_workers, collate_fn, channels_last, progress) -> "TeacherCache":
        info = D.current()
        shapes = _probe_shapes(distiller, dataset, device, amp_dtype, channels_last)
        want = {"format": FORMAT, "num_items": len(dataset), "num_views": num_views, "seed": dataset.seed,
                "content": dataset.content_key(), "teacher_weights": teacher_fingerprint(distiller),
                "teachers": {t: {f: list(s) for f, s in fs.items()} for t, fs in shapes.items()}}
        if (directory / "meta.json").exists():
            old = json.loads((directory / "meta.json").read_text())
            changed = sorted(k for k in want if old.get(k) != want[k])
            if not changed:
                log.info("reusing teacher cache %s", directory)
                return cls(directory)
            log.info("teacher cache %s is stale (%s changed); rebuilding", directory, ", ".join(changed))
        D.barrier()  # every rank has read the old meta before rank 0 removes it
        if info.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "meta.json").unlink(missing_ok=True)

        keys = [ViewKey(i, v) for i in range(len(dataset)) for v in range(num_views)]
        mine = keys[info.rank :: info.world_size]
        loader = DataLoader(dataset, batch_size=batch_size, sampler=mine, num_workers=num_workers,
                            collate_fn=collate_fn, pin_memory=torch.device(device).type == "cuda")
        tmp = {t: {f: directory / f".{t}.{f}.npy.tmp" for f in fields} for t, fields in shapes.items()}
        if info.is_main:
            for t, fields in shapes.items():
                for f, shape in fields.items():
                    np.lib.format.open_memmap(tmp[t][f], mode="w+", dtype=np.float16,
                                              shape=(len(dataset), num_views, *shape)).flush()
                    _allocate(tmp[t][f])
        D.barrier()
        arrays = {t: {f: np.load(p, mmap_mode="r+") for f, p in fields.items()} for t, fields in tmp.items()}

        from tqdm.auto import tqdm

        for batch in tqdm(loader, desc="teacher cache", disable=not progress, leave=False):
            outs = _teacher_forward(distiller, batch["inputs"], device, amp_dtype, channels_last)
            idx, vid = batch["index"].numpy(), batch["view_id"].numpy()
            for t, fields in arrays.items():
                for f, arr in fields.items():
                    arr[idx, vid] = outs[t][f].detach().float().cpu().numpy().astype(np.float16)
        for fields in arrays.values():
            for arr in fields.values():
                arr.flush()
        del arrays
        D.barrier()
        if info.is_main:
            for t, fields in tmp.items():
                for f, p in fields.items():
                    os.replace(p, directory / f"{t}.{f}.npy")
            meta = dict(want)
            part = directory / ".meta.json.tmp"
            part.write_text(json.dumps(meta, indent=1))
            os.replace(part, directory / "meta.json")
        D.barrier()
        cache = cls(directory)
        log.info("teacher cache %s: %d clips x %d views, %.1f MiB", directory, len(dataset), num_views, cache.nbytes() / 2**20)
        return cache


@contextmanager
def _one_builder(directory: Path) -> Iterator[None]:
    """One build of ``directory`` at a time across processes (two runs on one home): the second
    waits for the first, then finds its cache fresh and reuses it. Only the main rank locks; the
    other ranks of a DDP job follow it through the build's barriers."""
    if not D.current().is_main:
        yield
        return
    with one_writer(directory, "the teacher cache"):
        yield


@contextmanager
def _no_leftovers(directory: Path) -> Iterator[None]:
    """A failed build (a full disk, a teacher error, Ctrl-C) removes its temp files; the
    directory then has no meta.json, so nothing reads it as a cache."""
    try:
        yield
    except BaseException:
        if D.current().is_main:
            for part in directory.glob(".*.tmp"):
                part.unlink(missing_ok=True)
        raise


def _allocate(path: Path) -> None:
    """Reserve the file's blocks now: a memory-mapped write into a sparse file on a full disk
    kills the process with SIGBUS; reserved up front, a full disk is an ENOSPC here instead."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: best effort
            return
        raise
    finally:
        os.close(fd)


def _teacher_forward(distiller, inputs: dict, device, amp_dtype, channels_last) -> dict[str, dict[str, torch.Tensor]]:
    batch = {}
    for k, v in inputs.items():
        v = v.to(device, non_blocking=True)
        batch[k] = v.contiguous(memory_format=torch.channels_last_3d) if channels_last and v.dim() == 5 else v
    dev_type = torch.device(device).type
    with torch.no_grad(), torch.autocast(dev_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        outs = distiller.teacher_forward(batch)
    if not outs:
        raise ValueError("distiller.teacher_forward returned no teachers: nothing to cache")
    return {t: {f: v for f, v in d.items() if torch.is_tensor(v)} for t, d in outs.items()}


def _probe_shapes(distiller, dataset, device, amp_dtype, channels_last) -> dict[str, dict[str, tuple]]:
    """Per-sample shapes of every teacher output, from one item (identical on every rank)."""
    from torch.utils.data import default_collate

    item = default_collate([dataset[ViewKey(0, 0)]])
    outs = _teacher_forward(distiller, item["inputs"], device, amp_dtype, channels_last)
    return {t: {f: tuple(v.shape[1:]) for f, v in d.items()} for t, d in outs.items()}


def cached_plan(module: nn.Module, data: SeededViews, ctx: RunContext, num_views: int,
                cache: TeacherCache | None = None) -> TrainPlan:
    """A ``TrainPlan`` whose teachers come from a cache of ``num_views`` views per clip.

    The cache is ``cache`` when given (it must have been built on these clips with this view
    seed), else built or reused in ``ctx.work_dir/teacher_cache`` (a temporary directory, removed
    when the plan is closed, without one). The plan's data renders the student's view only: no
    teacher view is decoded or moved to the device during training.
    """
    tmp: Path | None = None
    if cache is None:
        directory = ctx.work_dir / "teacher_cache" if ctx.work_dir is not None else None
        if directory is None and D.current().enabled:
            raise ValueError("teacher_cache_views under DDP needs a checkpoint directory: one every rank can reach")
        if directory is None:  # nowhere to keep it: a temp dir, removed with the plan
            directory = tmp = Path(tempfile.mkdtemp(prefix="dtkd-teacher-cache-"))
        kw = ctx.loader_kwargs
        cache = TeacherCache.build(module, data, directory, num_views=num_views, batch_size=ctx.batch_size,
                                   device=ctx.device, amp_dtype=ctx.amp_dtype, num_workers=kw.get("num_workers", 0),
                                   collate_fn=kw.get("collate_fn"), channels_last=ctx.channels_last, progress=ctx.progress)
    elif (cache.seed, cache.num_items) != (data.seed, len(data)):  # a given cache; a built one is this data's
        raise ValueError(
            f"the teacher cache was built for {cache.num_items} clips with view seed {cache.seed}, this run has "
            f"{len(data)} clips with seed {data.seed}: the student would not see the cached views"
        )
    elif cache.meta.get("content") != (content := data.content_key()):
        raise ValueError(f"the teacher cache {cache.dir} was built on other clips or views (content key "
                         f"{cache.meta.get('content')}, this run's {content}): it is stale; rebuild it")

    def extras(batch) -> dict:
        return {"teacher_outputs": cache.lookup(batch["index"], batch["view_id"], device=ctx.device)}

    def close() -> None:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    return TrainPlan(data=data.with_views([STUDENT_VIEW]), num_views=cache.num_views, extras=extras, close=close)
