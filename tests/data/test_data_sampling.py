"""Temporal windows, per-view frame indices and crop boxes (hand-computed expectations)."""
from __future__ import annotations

import numpy as np
import pytest

from dtkd.data.sampling import (Box, Window, eval_boxes, frame_indices, random_resized_box,
                                random_window, uniform_windows)


def test_frame_indices_use_the_sampling_rate_when_the_window_fits():
    assert frame_indices(Window(5, 32), 8).tolist() == [5, 9, 13, 17, 21, 25, 29, 33]  # rate 4


def test_shorter_views_stretch_over_the_shared_window():
    # A 4-frame view in a 32-frame window samples every 8th frame.
    assert frame_indices(Window(0, 32), 4).tolist() == [0, 8, 16, 24]


def test_short_videos_repeat_frames():
    assert frame_indices(Window(0, 3), 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_uniform_windows_cover_start_to_end():
    assert uniform_windows(100, 32, 1) == [Window(34, 32)]  # centred: (100 - 32) // 2
    assert uniform_windows(100, 32, 3) == [Window(0, 32), Window(34, 32), Window(68, 32)]
    assert uniform_windows(10, 32, 2) == [Window(0, 10), Window(0, 10)]  # whole video


def test_random_window_stays_inside_the_video():
    rng = np.random.default_rng(0)
    starts = {random_window(40, 32, rng).start for _ in range(200)}
    assert starts == set(range(9))  # 0..40-32, all reachable
    assert random_window(20, 32, rng) == Window(0, 20)


@pytest.mark.parametrize("bad", [dict(num_frames=0, span=4), dict(num_frames=10, span=0)])
def test_windows_reject_empty_inputs(bad):
    with pytest.raises(ValueError):
        random_window(bad["num_frames"], bad["span"], np.random.default_rng(0))


def test_eval_boxes_three_crops_along_the_long_side():
    assert eval_boxes(48, 64, 3) == [Box(0, 0, 48, 48), Box(0, 8, 48, 48), Box(0, 16, 48, 48)]
    assert eval_boxes(64, 48, 1) == [Box(8, 0, 48, 48)]
    assert eval_boxes(32, 32, 3) == [Box(0, 0, 32, 32)] * 3


def test_random_resized_box_area_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = random_resized_box(48, 64, rng, scale=(0.5, 1.0))
        assert 0 <= b.top and b.top + b.height <= 48 and 0 <= b.left and b.left + b.width <= 64
        area = b.height * b.width / (48 * 64)
        assert 0.45 < area <= 1.0
        assert 0.7 < b.width / b.height < 1.45


def test_random_resized_box_falls_back_to_the_central_square():
    # A scale no box can satisfy in a 1 x 100 strip: width would exceed the frame every time.
    b = random_resized_box(1, 100, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert b == Box(0, 49, 1, 1)
