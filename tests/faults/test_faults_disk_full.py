"""Disk full, on a real full filesystem: every writer says "no space left on device" with the
path first, and leaves nothing half-written (the previous version survives)."""
from __future__ import annotations

import pytest
import torch
from engine_helpers import ToyClips, toy_distiller

from dtkd.data import generate_synthetic
from dtkd.distill.teacher_cache import TeacherCache
from dtkd.engine.checkpoint import CheckpointManager, load
from dtkd.engine.sampling import SeededViews
from dtkd.fsutil import DiskFullError, atomic_write_bytes


def test_a_checkpoint_on_a_full_disk_names_the_path_and_keeps_the_previous_one(small_disk):
    ckpts = CheckpointManager(small_disk(512) / "ckpt", keep_last=2)
    first = ckpts.save({"w": torch.ones(1000)}, 1)
    with pytest.raises(DiskFullError) as err:
        ckpts.save({"w": torch.zeros(400_000)}, 2)  # 1.6 MB on a 512 KiB disk
    message = str(err.value)
    assert message.startswith(f"{ckpts.path_for(2)}: no space left on device (writing a checkpoint)")
    assert "inline_container" not in message
    assert ckpts.list() == [first] and torch.equal(load(first)["w"], torch.ones(1000))
    assert not [p for p in ckpts.dir.iterdir() if p.name.startswith(".")]  # no temp file left


def test_atomic_write_on_a_full_disk_keeps_the_old_file(small_disk):
    path = small_disk(256) / "meta.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(DiskFullError, match="meta.json: no space left on device"):
        atomic_write_bytes(path, b"x" * 1_000_000)
    assert path.read_bytes() == b"old" and sorted(p.name for p in path.parent.iterdir()) == ["meta.json"]


def test_a_teacher_cache_on_a_full_disk_is_an_error_not_a_sigbus(small_disk):
    # The memory-mapped arrays are reserved up front: without that, writing into a sparse file on
    # a full tmpfs kills the process with SIGBUS.
    directory = small_disk(64) / "cache"
    views = SeededViews(ToyClips(400, views=("student", "cnn", "vit")), seed=0)
    with pytest.raises(DiskFullError, match=r"cache: no space left on device \(writing the teacher cache\)"):
        TeacherCache.build(toy_distiller(teachers=True), views, directory, num_views=4, batch_size=50)
    assert not (directory / "meta.json").exists()
    assert not list(directory.glob(".*"))  # temp arrays removed


def test_generating_data_on_a_full_disk_leaves_no_half_dataset(small_disk):
    root = small_disk(256) / "synthetic"
    with pytest.raises(DiskFullError, match=r"synthetic: no space left on device \(writing the synthetic dataset\)"):
        generate_synthetic(root, num_classes=2, clips_per_class={"train": 40, "test": 40}, size=32)
    assert not root.exists() and [p.name for p in root.parent.iterdir()] == [".synthetic.lock"]  # nothing half-written
