"""Crash-safe file and directory writes: readers see the old version or the new one, never half."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DiskFullError(OSError):
    """The device holding ``filename`` is full. The message starts with the path and says so
    plainly (torch's own, for a checkpoint, is "[enforce fail at inline_container.cc] unexpected
    pos"); what was being written is named, and nothing was left half-written."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__(errno.ENOSPC, "no space left on device", str(path))
        self.what = what

    def __str__(self) -> str:
        return (f"{self.filename}: no space left on device (writing {self.what}); nothing was half-written "
                "and the previous version is intact: free space, or point the output elsewhere, and rerun")

    def __reduce__(self):
        return (type(self), (self.filename, self.what))


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` or anything in its cause/context chain is ENOSPC or EDQUOT."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def naming_disk_full(path: str | Path, what: str) -> Iterator[None]:
    """Re-raise a full-disk failure inside the block (however the writer wrapped it) as a
    :class:`DiskFullError` naming ``path``; anything else passes through unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(path, what) from err
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and an atomic rename, so a
    reader never sees a half-written file and a crash leaves the previous version intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with naming_disk_full(path, "a file"), os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextmanager
def one_writer(root: str | Path, what: str = "a directory") -> Iterator[None]:
    """One process at a time checks and writes ``root``: an exclusive ``flock`` on a sibling
    ``.<name>.lock`` file for the block. A second writer of the same data (two runs on one data
    root) waits for the first, then finds its result and reuses it, instead of racing it to the
    rename of :func:`staged_dir`. The lock file stays (it is empty); the kernel drops the lock
    when a holder dies."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger(__name__).info("%s (%s) is being written by another process: waiting", root, what)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def staged_dir(root: str | Path, what: str = "a directory") -> Iterator[Path]:
    """Yield an empty directory beside ``root`` to write into; when the block succeeds it takes
    ``root``'s place (an existing ``root`` is moved aside first and deleted only after the swap),
    and when it fails it is deleted and ``root`` is untouched (a full disk: a DiskFullError
    naming ``root`` and ``what``)."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with naming_disk_full(root, what):
            yield tmp
        if root.exists():
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old)
        else:
            tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
