"""Errors raised by the data layer; each names the file it is about."""
from __future__ import annotations

import os


class VideoDecodeError(RuntimeError):
    """A video file is missing, unreadable or cannot deliver the requested frames."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when sent back from DataLoader workers
        return (type(self), (self.path, self.reason))


class AnnotationError(ValueError):
    """An annotation file (split list, CSV, JSON) is malformed; names the file and line/entry."""

    def __init__(self, path: str | os.PathLike, where: str, reason: str) -> None:
        self.path = str(path)
        self.where = where
        self.reason = reason
        super().__init__(f"{self.path} ({where}): {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.where, self.reason))
