"""Fault-injection fixtures: a real size-capped filesystem (tmpfs) for disk-full cases."""
from __future__ import annotations

import subprocess
import uuid

import pytest


@pytest.fixture
def small_disk(tmp_path):
    """A directory on its own tmpfs of a few hundred KiB, unmounted afterwards. Needs root (and
    CAP_SYS_ADMIN in a container): skipped, with the reason, where the machine does not allow it."""

    def mount(size_kib: int):
        point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a size-capped tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(point)
        return point

    mounted: list = []
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
