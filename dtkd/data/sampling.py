"""Temporal windows and crop boxes, shared by all views of one item.

Every view of an item covers the SAME temporal window and the SAME spatial box; each view then
takes its own number of frames from the window and resizes the box to its own crop size.
The window is as long as the longest view span (frames x sampling_rate) or the whole video if
shorter, so a view whose span is shorter than the window samples it with a larger stride.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int
    length: int  # source frames covered, >= 1


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    height: int
    width: int


def _length(num_frames: int, span: int) -> int:
    if num_frames < 1:
        raise ValueError(f"video has {num_frames} frames; need at least 1")
    if span < 1:
        raise ValueError(f"window span must be >= 1, got {span}")
    return min(span, num_frames)


def random_window(num_frames: int, span: int, rng: np.random.Generator) -> Window:
    length = _length(num_frames, span)
    return Window(int(rng.integers(0, num_frames - length + 1)), length)


def uniform_windows(num_frames: int, span: int, num_clips: int) -> list[Window]:
    """`num_clips` windows evenly spread from the start to the end (one clip: the centre)."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    length = _length(num_frames, span)
    slack = num_frames - length
    if num_clips == 1:
        return [Window(slack // 2, length)]
    return [Window(int(round(slack * i / (num_clips - 1))), length) for i in range(num_clips)]


def frame_indices(window: Window, frames: int) -> np.ndarray:
    """`frames` indices spread evenly over the window: start + floor(k * length / frames).

    With length = frames x rate this is exactly start + k x rate; a window shorter than
    `frames` repeats frames.
    """
    k = np.arange(frames, dtype=np.int64)
    return window.start + (k * window.length) // frames


def random_resized_box(height: int, width: int, rng: np.random.Generator, *,
                       scale: tuple[float, float] = (0.25, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> Box:
    """Inception-style crop: area fraction in `scale`, log-uniform aspect ratio in `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    side = min(height, width)  # fall back to the central square
    return Box((height - side) // 2, (width - side) // 2, side, side)


def eval_boxes(height: int, width: int, num_crops: int) -> list[Box]:
    """Square boxes of the short side, evenly placed along the long side (3: start/centre/end).

    Equivalent to "resize the short side to the crop size, then crop", done at source scale so
    that all views crop the same region.
    """
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    side = min(height, width)
    slack_y, slack_x = height - side, width - side
    positions = [0.5] if num_crops == 1 else [i / (num_crops - 1) for i in range(num_crops)]
    return [Box(int(round(slack_y * p)), int(round(slack_x * p)), side, side) for p in positions]
