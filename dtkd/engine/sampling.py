"""Deterministic, resumable, DDP-aware sampling of (clip index, view id) keys.

Every random choice about WHAT a step sees is a pure function of (seed, epoch, index):
the order of clips, which augmented view of a clip is drawn, and the crop/window of that
view (``SeededViews`` seeds the dataset's RNGs from (seed, index, view_id)). This is what
makes three things exact rather than approximate:

* resume mid-epoch: skip the batches already done and the rest of the epoch is identical;
* DDP: rank r takes its slice of each global batch, so W ranks see the same global batches
  as one process (independently of how many loader workers each uses);
* cached teachers: the student sees exactly the (index, view_id) view the cache was built on.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ViewKey(NamedTuple):
    index: int
    view_id: int


def derive_seed(*parts: int) -> int:
    """A stable 32-bit seed from integers (SeedSequence hashing: no collisions of a+b style)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Seed python, numpy and torch (CPU) global RNGs; restore them afterwards.

    Restoring keeps the caller's RNG streams (dropout, other items) unaffected by how many
    items were loaded in between, which matters with num_workers=0.
    """
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    # The CPU generator only: torch.manual_seed also queues a lazy CUDA seeding that records a
    # Python traceback, 2.4 ms a call, a seventh of a CPU distillation epoch (docs/benchmarks.md).
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededViews(Dataset):
    """Wraps a dataset so that item ``(index, view_id)`` is a reproducible augmented view.

    Two ways a base dataset can draw its random window/crop, both pinned here:
    * from the global python/numpy/torch RNGs: they are seeded from (seed, index, view_id)
      around the call (and restored afterwards);
    * from a key it is given through ``set_epoch(k)`` (``dtkd.data.ClipDataset`` uses
      (its seed, k, index)): k is derived from (seed, view_id). The wrapper owns that key,
      so do not call ``set_epoch`` on the base yourself.
    Items gain ``"view_id"``; a plain int key is view 0.
    """

    def __init__(self, base: Dataset, seed: int = 0) -> None:
        self.base = base
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def with_views(self, names) -> "SeededViews":
        """The same seeded items rendering only the views ``names``; the base dataset must offer
        ``with_views`` (``dtkd.data.ClipDataset`` does), which keeps every view's content."""
        select = getattr(self.base, "with_views", None)
        if select is None:
            raise TypeError(f"{type(self.base).__name__} cannot render a subset of its views: give it a "
                            f"with_views(names) method (see dtkd.data.ClipDataset.with_views)")
        return SeededViews(select(names), self.seed)

    def content_key(self) -> str:
        """What every item depends on: the base dataset's ``content_key()`` (its clips, views and
        augmentation; ``dtkd.data.ClipDataset`` has one) and the view seed."""
        import hashlib

        return hashlib.sha256(f"{self.base.content_key()}:{self.seed}".encode()).hexdigest()[:24]

    def __getitem__(self, key: Any) -> dict:
        index, view_id = (int(key), 0) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        s = derive_seed(self.seed, index, view_id)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(derive_seed(self.seed, view_id))
        with seeded_rng(s):
            item = self.base[index]
        item = dict(item)
        item["index"] = index
        item["view_id"] = view_id
        return item


class EpochSampler(Sampler[ViewKey]):
    """Yields this rank's ``ViewKey``s of one epoch, in global-batch order.

    The epoch's permutation comes from (seed, epoch). Global batch j is
    ``perm[j*B:(j+1)*B]``; rank r yields its contiguous slice of it, so the union over ranks
    of step j is exactly what a single process sees at step j. Incomplete last batches are
    dropped (their gradient would be weighted differently under DDP).

    ``num_views``: None = online (view_id = epoch, a fresh augmentation each epoch);
    N = one of N cached views, cycling so that a clip visits each of its views once per N
    epochs, starting at a per-clip random offset.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_views: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {world_size} DDP processes")
        if n < global_batch:
            raise ValueError(f"the dataset has {n} clips, fewer than one batch of {global_batch}")
        self.n, self.global_batch, self.shuffle, self.seed = n, global_batch, shuffle, seed
        self.num_views, self.rank, self.world_size = num_views, rank, world_size
        self.local_batch = global_batch // world_size
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch and skip its first ``start_step`` global batches (resume)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 1))
        return torch.randperm(self.n, generator=g)

    def view_ids(self, indices: torch.Tensor) -> torch.Tensor:
        if self.num_views is None:
            return torch.full_like(indices, self.epoch)
        g = torch.Generator().manual_seed(derive_seed(self.seed, 2))
        offset = torch.randint(self.num_views, (self.n,), generator=g)
        return (offset[indices] + self.epoch) % self.num_views

    def __iter__(self) -> Iterator[ViewKey]:
        perm = self.order()
        views = self.view_ids(perm)
        b, B = self.local_batch, self.global_batch
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * B + self.rank * b
            for i, v in zip(perm[lo : lo + b].tolist(), views[lo : lo + b].tolist()):
                yield ViewKey(i, v)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch


class ShardSampler(Sampler[int]):
    """Evaluation sharding: rank r takes indices r, r+W, ... with NO padding, so summed
    correct/count over ranks counts every clip exactly once."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices: Sequence[int] = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
