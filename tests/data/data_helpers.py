"""Helpers for the data tests: small videos whose pixels encode what a test must check."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dtkd.data.video import write_video

# Flat per-frame blue level: index t is written as STEP * t, so round(blue / STEP) recovers t
# even after lossy mpeg4 coding (errors of a few levels).
STEP = 8


def index_frames(frames: int = 32, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (T, H, W, 3): red = x gradient, green = y gradient, blue = STEP x frame index."""
    assert (frames - 1) * STEP <= 255
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    out = np.empty((frames, height, width, 3), np.uint8)
    out[..., 0] = np.rint(x)
    out[..., 1] = np.rint(y)
    out[..., 2] = (STEP * np.arange(frames))[:, None, None]
    return out


def frame_ids(frames_thwc) -> list[int]:
    """Recover frame indices from decoded index frames (T, H, W, C) uint8."""
    blue = np.asarray(frames_thwc)[..., 2].reshape(len(frames_thwc), -1).mean(1)
    return [int(round(b / STEP)) for b in blue]


def write_index_video(path: Path, frames: int = 32, height: int = 48, width: int = 64, fps: int = 8) -> Path:
    # High bit rate: flat areas then decode within a level or two of the input.
    return write_video(path, index_frames(frames, height, width), fps=fps, bit_rate=4_000_000)


def tiny_clip(seed: int, frames: int = 8, size: int = 32) -> np.ndarray:
    """Random-but-smooth frames, enough for format tests that only need a decodable file."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(1, 1, 1, 3))
    ramp = np.linspace(0, 60, frames)[:, None, None, None]
    return np.clip(base + ramp + np.zeros((frames, size, size, 3)), 0, 255).astype(np.uint8)
