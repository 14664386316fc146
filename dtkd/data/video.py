"""Video I/O: probe metadata, read selected frames, write small test/synthetic videos.

PyAV is the reference backend. torchcodec is an optional backend (it needs system FFmpeg
shared libraries, which PyAV's wheel does not provide); `available_backends()` says what works.
"""
from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import av
import numpy as np

from dtkd.data.errors import VideoDecodeError

if TYPE_CHECKING:
    import torch

# Containers sometimes over-report their frame count by a frame or two (B-frame reordering,
# edit lists); indices that far past the last decodable frame repeat the last frame instead of
# failing. A larger gap means a truncated file or a wrong count, and raises.
TAIL_TOLERANCE = 4

# Below this first index, decoding from the start is cheaper and safer than seeking.
SEEK_THRESHOLD = 64

# Encoder per file extension: mpeg4 is fast and bit-exact between runs (same PyAV build);
# .webm needs a VPx encoder.
_ENCODERS = {".avi": "mpeg4", ".mp4": "mpeg4", ".mkv": "mpeg4", ".webm": "libvpx"}

PROBE_VERIFY_MODES = ("header", "first_frame", "full")


def _open(path: str | os.PathLike):
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(p, "file not found")
    if not p.is_file():
        raise VideoDecodeError(p, "not a regular file")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(p, f"cannot open container: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(p, "container has no video stream")
    if container.streams.video[0].codec_context is None:  # e.g. an AVI FourCC FFmpeg does not know
        container.close()
        raise VideoDecodeError(p, "no decoder for its video codec (unknown to this FFmpeg build)")
    return container


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _count_packets(path: str | os.PathLike) -> int:
    """Frame count by demuxing (no decoding), for containers such as WebM that store none."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def probe_video(path: str | os.PathLike, *, verify: str = "first_frame") -> dict:
    """Metadata and health of one video; never raises for a bad file.

    Returns ``dict(frames, fps, width, height, duration, ok, error)``. ``verify``:
    ``"header"`` reads container metadata only; ``"first_frame"`` also decodes one frame;
    ``"full"`` decodes every frame and reports the decoded count (slow, for quality gates).
    """
    if verify not in PROBE_VERIFY_MODES:
        raise ValueError(f"verify={verify!r}; expected one of {PROBE_VERIFY_MODES}")
    info = dict(frames=0, fps=0.0, width=0, height=0, duration=0.0, ok=False, error="")
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            info["fps"] = _stream_fps(stream)
            info["width"], info["height"] = int(ctx.width), int(ctx.height)
            if stream.duration is not None and stream.time_base:
                info["duration"] = float(stream.duration * stream.time_base)
            elif container.duration:
                info["duration"] = container.duration / av.time_base
            frames = int(stream.frames or 0)
            if verify == "full":
                decoded = sum(1 for _ in container.decode(stream))
                if frames and abs(frames - decoded) > TAIL_TOLERANCE:
                    raise VideoDecodeError(
                        path, f"container says {frames} frames but only {decoded} decode"
                    )
                frames = decoded
            elif verify == "first_frame":
                next(iter(container.decode(stream)))
        if frames <= 0:
            frames = _count_packets(path)
        if frames <= 0:
            raise VideoDecodeError(path, "video stream has no frames")
        if info["width"] <= 0 or info["height"] <= 0:
            raise VideoDecodeError(path, f"invalid frame size {info['width']}x{info['height']}")
        if info["duration"] <= 0 and info["fps"] > 0:
            info["duration"] = frames / info["fps"]
        info["frames"] = frames
        info["ok"] = True
    except VideoDecodeError as exc:
        info["error"] = exc.reason
    except StopIteration:
        info["error"] = "no decodable frame"
    except Exception as exc:  # noqa: BLE001 - whatever a broken file raises, it is a flagged file, not a crash
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def _check_indices(path, indices: Sequence[int]) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{path}: no frame indices requested")
    if idx.min() < 0:
        raise ValueError(f"{path}: negative frame index {int(idx.min())}")
    return idx


def _gather(path, decoded: dict[int, np.ndarray], idx: np.ndarray, last: int) -> torch.Tensor:
    """Stack the requested frames; indices just past the end repeat the last decoded frame."""
    import torch  # here, not at the top: probing and writing (the data stages) never import torch

    if last < 0:
        raise VideoDecodeError(path, "no decodable frame")
    too_far = idx[idx > last + TAIL_TOLERANCE]
    if too_far.size:
        raise VideoDecodeError(
            path,
            f"requested frame {int(too_far.max())} but the stream ends after {last + 1} frames "
            "(truncated file or wrong frame count)",
        )
    return torch.from_numpy(np.stack([decoded[min(int(i), last)] for i in idx]))


def _decode_sequential(path, container, stream, wanted: set[int], stop: int):
    decoded: dict[int, np.ndarray] = {}
    last = -1
    for i, frame in enumerate(container.decode(stream)):
        last = i
        if i in wanted or i == stop:  # keep the stop frame: it may stand in for the tail
            decoded[i] = frame.to_ndarray(format="rgb24")
        if i >= stop:
            break
    if last >= 0 and last not in decoded:
        decoded[last] = frame.to_ndarray(format="rgb24")
    return decoded, last


def _decode_after_seek(container, stream, wanted: set[int], first: int, stop: int):
    """Seek to the key frame before `first`; frame indices come from timestamps.

    Returns None when timestamps are unusable, the seek landed past `first`, or a requested
    frame has no matching timestamp; the caller then decodes from the start.
    """
    rate = stream.average_rate or stream.base_rate
    tb = stream.time_base
    if not rate or not tb:
        return None
    t0 = stream.start_time or 0
    container.seek(t0 + int(Fraction(first) / Fraction(rate) / Fraction(tb)),
                   stream=stream, backward=True, any_frame=False)
    decoded: dict[int, np.ndarray] = {}
    last = -1
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        i = int(round((frame.pts - t0) * Fraction(tb) * Fraction(rate)))
        if last < 0 and i > first:
            return None
        last = i
        if i in wanted or i == stop:
            decoded[i] = frame.to_ndarray(format="rgb24")
        if i >= stop:
            break
    if last < 0:
        return None
    if last not in decoded:
        decoded[last] = frame.to_ndarray(format="rgb24")
    if any(i <= last and i not in decoded for i in wanted):
        return None
    return decoded, last


def _video_stream(container, threads: int):
    """The first video stream, decoding with ``threads`` threads (frame+slice threading if > 1)."""
    stream = container.streams.video[0]
    stream.thread_count = threads
    if threads > 1:
        stream.thread_type = "AUTO"
    return stream


def _read_pyav(path, idx: np.ndarray, *, threads: int, allow_seek: bool) -> torch.Tensor:
    wanted = set(int(i) for i in idx)
    first, stop = int(idx.min()), int(idx.max())
    try:
        with _open(path) as container:
            stream = _video_stream(container, threads)
            result = None
            if allow_seek and first >= SEEK_THRESHOLD:
                result = _decode_after_seek(container, stream, wanted, first, stop)
                if result is None:
                    container.seek(0)
            if result is None:
                result = _decode_sequential(path, container, stream, wanted, stop)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"decoding failed: {exc}") from exc
    decoded, last = result
    return _gather(path, decoded, idx, last)


def _read_torchcodec(path, idx: np.ndarray, *, threads: int) -> torch.Tensor:
    import torch
    from torchcodec.decoders import VideoDecoder

    p = Path(path)
    if not p.is_file():
        raise VideoDecodeError(p, "file not found")
    try:
        decoder = VideoDecoder(str(p), dimension_order="NHWC", num_ffmpeg_threads=threads,
                               seek_mode="approximate")
        n = len(decoder)
        too_far = idx[idx > n - 1 + TAIL_TOLERANCE]
        if too_far.size:
            raise VideoDecodeError(p, f"requested frame {int(too_far.max())} but the stream has "
                                      f"{n} frames (truncated file or wrong frame count)")
        clamped = np.minimum(idx, n - 1)
        unique, inverse = np.unique(clamped, return_inverse=True)
        frames = decoder.get_frames_at(unique.tolist()).data
    except VideoDecodeError:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        raise VideoDecodeError(p, f"torchcodec decoding failed: {exc}") from exc
    return frames[torch.from_numpy(inverse.reshape(-1))].contiguous()


def read_frames(
    path: str | os.PathLike,
    indices: Iterable[int],
    *,
    backend: str = "pyav",
    threads: int = 1,
    allow_seek: bool = True,
) -> torch.Tensor:
    """Decode the frames at `indices` (any order, repeats allowed) -> uint8 tensor (T, H, W, C).

    Raises VideoDecodeError naming the file when it is missing, undecodable or shorter than the
    requested indices. `threads` is per call: keep 1 inside DataLoader workers.
    """
    idx = _check_indices(path, list(indices))
    if backend == "pyav":
        return _read_pyav(path, idx, threads=threads, allow_seek=allow_seek)
    if backend == "torchcodec":
        if "torchcodec" not in available_backends():
            raise RuntimeError(f"backend 'torchcodec' is not usable here: {_torchcodec_problem()}")
        return _read_torchcodec(path, idx, threads=threads)
    raise ValueError(f"unknown video backend {backend!r}; known: pyav, torchcodec")


def read_all_frames(path: str | os.PathLike, *, threads: int = 1) -> torch.Tensor:
    """Every frame of a video -> uint8 (T, H, W, C); used to build the clip store."""
    import torch

    frames = []
    try:
        with _open(path) as container:
            stream = _video_stream(container, threads)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"decoding failed after {len(frames)} frames: {exc}") from exc
    if not frames:
        raise VideoDecodeError(path, "no decodable frame")
    return torch.from_numpy(np.stack(frames))


@functools.lru_cache(maxsize=1)
def _torchcodec_problem() -> str:
    """Empty string when torchcodec imports and loads its FFmpeg libraries, else why not."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as exc:  # ImportError, or OSError/RuntimeError for missing FFmpeg libs
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first_line}"
    return ""


def available_backends() -> list[str]:
    return ["pyav"] + (["torchcodec"] if not _torchcodec_problem() else [])


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    fps: int = 8,
    codec: str | None = None,
    bit_rate: int | None = None,
) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) with PyAV; codec chosen by extension if not given.

    Single-threaded so that the same frames give byte-identical files.
    """
    p = Path(path)
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{p}: frames must be uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}")
    t, h, w, _ = arr.shape
    if t == 0 or h % 2 or w % 2:
        raise ValueError(f"{p}: need >= 1 frame and even height/width for yuv420p, got {arr.shape}")
    codec = codec or _ENCODERS.get(p.suffix.lower())
    if codec is None:
        raise ValueError(f"{p}: no default encoder for extension {p.suffix!r}; pass codec=")
    p.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(p), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        # ~2 bits per pixel per frame keeps small synthetic clips close to lossless.
        stream.bit_rate = bit_rate or max(200_000, 2 * h * w * fps)
        if codec == "mpeg4":
            stream.options = {"qmin": "2", "qmax": "8"}
        for frame in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return p
