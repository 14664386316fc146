"""Video probing and frame reading (PyAV; torchcodec when it is usable here)."""
from __future__ import annotations

import av
import numpy as np
import pytest

from dtkd.data import VideoDecodeError, available_backends, probe_video, read_frames, write_video
from dtkd.data.video import SEEK_THRESHOLD, TAIL_TOLERANCE, read_all_frames

from data_helpers import frame_ids, tiny_clip, write_index_video


@pytest.fixture(scope="module")
def index_video(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("video") / "index.avi", frames=30)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """150 frames: long enough that reads from frame >= SEEK_THRESHOLD go through seeking."""
    frames = np.zeros((150, 16, 16, 3), np.uint8)
    frames[..., 0] = (np.arange(150) % 30 * 8)[:, None, None]
    frames[..., 1] = (np.arange(150) // 30 * 40)[:, None, None]
    return write_video(tmp_path_factory.mktemp("video") / "long.mp4", frames, fps=25, bit_rate=2_000_000)


def _decode_all(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_probe_reports_container_metadata(index_video):
    info = probe_video(index_video)
    assert info == dict(frames=30, fps=8.0, width=64, height=48, duration=pytest.approx(30 / 8),
                        ok=True, error="")


def test_read_frames_returns_requested_frames_in_order_with_repeats(index_video):
    frames = read_frames(index_video, [5, 0, 5, 29, 12])
    assert frames.dtype.is_floating_point is False and tuple(frames.shape) == (5, 48, 64, 3)
    assert frame_ids(frames.numpy()) == [5, 0, 5, 29, 12]
    assert np.array_equal(frames.numpy()[1], _decode_all(index_video)[0])


def test_indices_slightly_past_the_end_repeat_the_last_frame(index_video):
    frames = read_frames(index_video, [28, 29 + TAIL_TOLERANCE])
    assert frame_ids(frames.numpy()) == [28, 29]


def test_indices_far_past_the_end_raise_naming_the_file(index_video):
    with pytest.raises(VideoDecodeError, match=r"index\.avi: requested frame 40 but the stream ends after 30"):
        read_frames(index_video, [0, 40])


def test_negative_or_empty_indices_are_rejected(index_video):
    with pytest.raises(ValueError, match="negative frame index -1"):
        read_frames(index_video, [-1, 2])
    with pytest.raises(ValueError, match="no frame indices"):
        read_frames(index_video, [])


def test_seeking_reads_the_same_frames_as_decoding_from_the_start(long_video):
    wanted = [SEEK_THRESHOLD + 3, 100, 149, 100]
    sought = read_frames(long_video, wanted, allow_seek=True).numpy()
    sequential = read_frames(long_video, wanted, allow_seek=False).numpy()
    reference = _decode_all(long_video)[wanted]
    assert np.array_equal(sequential, reference)
    assert np.array_equal(sought, reference)


def test_missing_file_raises_and_probe_flags_it(tmp_path):
    path = tmp_path / "nope.avi"
    with pytest.raises(VideoDecodeError) as err:
        read_frames(path, [0])
    assert err.value.path == str(path) and err.value.reason == "file not found"
    assert str(path) in str(err.value)
    info = probe_video(path)
    assert info["ok"] is False and info["error"] == "file not found" and info["frames"] == 0


def test_garbage_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "garbage.avi"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    with pytest.raises(VideoDecodeError, match="garbage.avi"):
        read_frames(path, [0])
    info = probe_video(path)
    assert info["ok"] is False and info["error"]


def test_truncated_file_fails_the_full_probe_and_late_reads(tmp_path, index_video):
    data = index_video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])  # the header survives, the index and late frames not
    assert probe_video(cut, verify="header")["ok"]  # the header alone cannot tell
    full = probe_video(cut, verify="full")
    assert full["ok"] is False and "container says 30 frames but only" in full["error"]
    with pytest.raises(VideoDecodeError, match="cut.avi"):
        read_frames(cut, [29])


def test_webm_without_frame_count_is_counted_by_demuxing(tmp_path):
    path = write_video(tmp_path / "clip.webm", tiny_clip(0, frames=6))
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # WebM stores no frame count
    info = probe_video(path)
    assert info["ok"] and info["frames"] == 6 and (info["width"], info["height"]) == (32, 32)
    assert read_frames(path, [5]).shape == (1, 32, 32, 3)


def test_read_all_frames_matches_a_plain_decode(index_video):
    assert np.array_equal(read_all_frames(index_video).numpy(), _decode_all(index_video))


def test_unknown_backend_and_bad_verify_mode_are_rejected(index_video):
    with pytest.raises(ValueError, match="unknown video backend 'cv2'"):
        read_frames(index_video, [0], backend="cv2")
    with pytest.raises(ValueError, match="verify='all'"):
        probe_video(index_video, verify="all")


def test_write_video_rejects_odd_sizes_and_wrong_dtype(tmp_path):
    with pytest.raises(ValueError, match="even height/width"):
        write_video(tmp_path / "odd.avi", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.avi", np.zeros((2, 16, 16, 3), np.float32))


@pytest.mark.skipif("torchcodec" not in available_backends(), reason="torchcodec not usable here")
def test_torchcodec_backend_matches_pyav(index_video, long_video, tmp_path):
    for path, wanted in ((index_video, [3, 0, 3, 29]), (long_video, [0, 70, 149])):
        a = read_frames(path, wanted, backend="pyav")
        b = read_frames(path, wanted, backend="torchcodec")
        assert a.shape == b.shape
        # Both wrap FFmpeg, possibly different builds: allow rounding in the colour conversion.
        assert (a.int() - b.int()).abs().float().mean() < 1.0
    with pytest.raises(VideoDecodeError, match="missing.avi"):
        read_frames(tmp_path / "missing.avi", [0], backend="torchcodec")
