"""Per-video probe statistics for the quality gate: decode every frame with PyAV and hash the bytes.

The gate must *prove* a video decodes, so the probe demuxes and decodes the whole first video
stream (a header-only probe reports the container's frame count even when the file is truncated).
Every failure is captured into the row (``decodable=False`` plus ``error``); nothing raises.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from dtkd.fsutil import file_sha256

PROBE_COLUMNS = ["decodable", "frames", "declared_frames", "fps", "width", "height", "duration_s", "sha256",
                 "size_bytes", "decode_errors", "timestamps_monotonic", "error"]
VFR_TOLERANCE = 0.1  # timestamps' frame rate this far (relative) from the header's: the header is wrong


def _empty(error: str) -> dict:
    return {"decodable": False, "frames": None, "declared_frames": None, "fps": None, "width": None, "height": None,
            "duration_s": None, "decode_errors": None, "timestamps_monotonic": None, "error": error}


def decode_probe(path: str | Path) -> dict:
    """Decode all frames of the first video stream of ``path``, packet by packet.

    Returns ``decodable, frames, declared_frames, fps, width, height, duration_s,
    decode_errors, timestamps_monotonic, error``. ``frames`` counts decoded frames and
    ``declared_frames`` is the container header's count (a truncated or damaged file decodes
    fewer). A packet that fails to decode is counted in ``decode_errors`` and decoding goes on
    (garbage in the middle of a file). ``fps`` and ``duration_s`` come from the frames'
    timestamps when there are two or more (a variable-frame-rate file's header rate can be far
    off: its mean rate and its true span are used), else from the header rate.
    """
    import av  # PyAV: imported here so that the quality module imports without it

    path = Path(path)
    if not path.is_file():
        return _empty(f"file not found: {path}")
    times: list[float] = []
    errors = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return _empty("no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                return _empty("no decoder for its video codec")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            header_fps = float(rate) if rate else None
            width, height = stream.codec_context.width, stream.codec_context.height
            declared = int(stream.frames) or None  # the container's claim; 0 = unknown
            frames = 0
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    errors += 1
                    continue
                for frame in decoded:
                    frames += 1
                    if frame.time is not None:
                        times.append(float(frame.time))
    except Exception as err:  # any demux failure makes the video undecodable
        return _empty(f"{type(err).__name__}: {err}")
    monotonic = all(b > a for a, b in zip(times, times[1:]))
    if frames == 0:
        return {**_empty("no decodable frames"), "declared_frames": declared, "fps": header_fps, "width": width,
                "height": height, "decode_errors": errors}
    fps, duration = header_fps, (frames / header_fps if header_fps else None)
    if len(times) == frames and frames >= 2 and monotonic and times[-1] > times[0]:
        measured = (frames - 1) / (times[-1] - times[0])
        if header_fps is None or abs(measured - header_fps) > VFR_TOLERANCE * header_fps:
            fps = measured  # variable frame rate, or a wrong header: the timestamps are the truth
        duration = times[-1] - times[0] + 1.0 / fps
    return {"decodable": True, "frames": frames, "declared_frames": declared, "fps": fps, "width": width,
            "height": height, "duration_s": duration, "decode_errors": errors, "timestamps_monotonic": monotonic,
            "error": None}


def probe_one(path: str | Path, *, probe: Callable[[str], dict] = decode_probe, hash_files: bool = True,
              sha256: str | None = None) -> dict:
    """One path's probe row; ``sha256``: the hash the manifest already computed (not recomputed)."""
    row = dict(probe(str(path)))
    row.setdefault("error", None)
    if "duration_s" not in row and "duration" in row:  # dtkd.data.probe_video's key name
        row["duration_s"] = row.pop("duration")
    if "decodable" not in row and "ok" in row:
        row["decodable"] = bool(row.pop("ok"))
    p = Path(path)
    try:
        row["size_bytes"] = p.stat().st_size
        row["sha256"] = (sha256 or file_sha256(p)) if hash_files else None
    except OSError as err:
        row["size_bytes"], row["sha256"] = None, None
        row["decodable"] = False
        row["error"] = row["error"] or f"{type(err).__name__}: {err}"
    return {k: row.get(k) for k in PROBE_COLUMNS}


def segment_stats(manifest: pd.DataFrame) -> pd.DataFrame:
    """:func:`probe_paths` for a manifest of segments (dtkd.data.manifest.SEGMENT_COLUMNS, e.g.
    EPIC-KITCHENS-100): one row per segment, every frame of it decoded (a frame folder: its JPEGs;
    a video: the whole file, once per file). ``frames`` is the segment's length and
    ``declared_frames`` the same (a truncated segment is undecodable instead). ``sha256``
    identifies the segment: its frame files' digest, or sha256("<video sha256>:<start>:<stop>")
    for a video, so that segments of one video are not duplicates of each other."""
    import hashlib

    from dtkd.data.epic import probe_segment
    from dtkd.data.formats import Segment
    from dtkd.data.video import probe_video

    videos: dict[str, dict] = {}
    rows = []
    for r in manifest.itertuples(index=False):
        seg = Segment(str(r.video_id), Path(r.path), str(r.label), str(r.split), source=str(r.source),
                      start_frame=int(r.start_frame), stop_frame=int(r.stop_frame), fps=float(r.fps))
        if seg.source == "video":
            if str(seg.path) not in videos:  # every frame of the file decodes: once per file
                videos[str(seg.path)] = probe_video(seg.path, verify="full")
            full = videos[str(seg.path)]
            info = probe_segment(seg, verify="header")  # this segment's own end check, and the file's hash
            info["ok"], info["error"] = full["ok"] and info["ok"], full["error"] or info["error"]
            sha = hashlib.sha256(f"{info['sha256']}:{seg.start_frame}:{seg.stop_frame}".encode()).hexdigest()
            info.update(frames=seg.num_frames, sha256=sha if info["sha256"] else None)
        else:
            info = probe_segment(seg, verify="full")
        fps = info["fps"] or None
        rows.append({"decodable": bool(info["ok"]), "frames": seg.num_frames if info["ok"] else 0,
                     "declared_frames": seg.num_frames, "fps": fps, "width": info["width"] or None,
                     "height": info["height"] or None, "duration_s": seg.num_frames / fps if fps else None,
                     "decode_errors": 0, "timestamps_monotonic": True, "error": info["error"] or None,
                     "size_bytes": info["size_bytes"] or None, "sha256": info["sha256"] or None})
    return _probe_frame(rows)


def probe_paths(paths: Iterable[str], *, workers: int = 1, probe: Callable[[str], dict] = decode_probe,
                hash_files: bool = True, sha256: Iterable[str] | None = None) -> pd.DataFrame:
    """Probe every path (in order); one row per path with :data:`PROBE_COLUMNS`. ``sha256``: the
    manifest's hashes, in the same order (empty where unknown), reused instead of rehashing."""
    paths = list(paths)
    known = list(sha256) if sha256 is not None else [None] * len(paths)
    fn = lambda pk: probe_one(pk[0], probe=probe, hash_files=hash_files, sha256=pk[1] or None)  # noqa: E731
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(fn, zip(paths, known)))
    else:
        rows = [fn(pk) for pk in zip(paths, known)]
    return _probe_frame(rows)


def _probe_frame(rows: list[dict]) -> pd.DataFrame:
    """Probe rows as a table of :data:`PROBE_COLUMNS` with their dtypes (nullable ints, floats)."""
    df = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    df["decodable"] = df["decodable"].astype(bool)
    for col in ("frames", "declared_frames", "width", "height", "size_bytes"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("fps", "duration_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df
