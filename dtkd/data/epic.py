"""EPIC-KITCHENS-100 beyond its annotations: reading a narration segment's frames, and a tiny
fixture written in the dataset's own layout (annotation CSVs, class lists, JPEG frame folders
and/or per-participant videos). The reader itself is ``dtkd.data.formats.read_epic_kitchens``.

Fixture layout (EPIC's)::

    <root>/annotations/EPIC_100_{train,validation}.csv, EPIC_100_{verb,noun}_classes.csv
    <root>/<P>/rgb_frames/<video_id>/frame_0000000001.jpg ...
    <root>/<P>/videos/<video_id>.MP4
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dtkd.data.errors import VideoDecodeError
from dtkd.data.formats import EPIC_CLASS_FILES, EPIC_FILES, Segment, epic_frame_name
from dtkd.data.video import read_frames, write_video

EPIC_COLUMNS = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                "noun_class", "all_nouns", "all_noun_classes"]


def read_jpeg_frames(folder: str | os.PathLike, frames: Sequence[int]) -> torch.Tensor:
    """1-based EPIC frames of a frame folder -> uint8 (T, H, W, C); each file decoded once."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    decoded: dict[int, torch.Tensor] = {}
    for f in dict.fromkeys(int(f) for f in frames):
        path = folder / epic_frame_name(f)
        if not path.is_file():
            raise VideoDecodeError(path, f"frame {f} is absent")
        try:
            with Image.open(path) as img:
                decoded[f] = torch.from_numpy(np.asarray(img.convert("RGB")).copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise VideoDecodeError(path, f"not a decodable JPEG: {exc}") from None
    return torch.stack([decoded[int(f)] for f in frames])


def read_segment(segment: Segment, indices: Sequence[int], *, backend: str = "pyav") -> torch.Tensor:
    """Frames ``indices`` (0-based within the segment, like ``read_frames``) -> uint8 (T, H, W, C).
    An index past the segment's end is an error naming the narration."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= segment.num_frames:
        raise ValueError(f"narration {segment.video_id!r}: indices {idx.tolist()} outside its "
                         f"{segment.num_frames} frames")
    if segment.source == "frames":
        return read_jpeg_frames(segment.path, (idx + segment.start_frame).tolist())
    return read_frames(segment.path, (idx + segment.start_frame - 1).tolist(), backend=backend)


def probe_segment(segment: Segment, *, verify: str = "first_frame") -> dict:
    """Like ``probe_video`` for one segment, plus its content identity; never raises for bad
    files. ``frames`` is the segment's length. A frame folder: the first frame gives the size,
    ``verify="full"`` decodes every frame of the segment; ``size_bytes``/``sha256`` cover the
    segment's frame files in order. A video: the video is probed (its identity is the file's)
    and must reach the segment's last frame."""
    import hashlib

    from dtkd.data.video import TAIL_TOLERANCE, probe_video
    from dtkd.fsutil import file_sha256

    info = dict(frames=segment.num_frames, fps=segment.fps, width=0, height=0, ok=False, error="",
                size_bytes=0, sha256="")
    if segment.source == "video":
        probe = probe_video(segment.path, verify=verify)
        info.update(fps=probe["fps"], width=probe["width"], height=probe["height"], error=probe["error"])
        if probe["ok"] and segment.stop_frame > probe["frames"] + TAIL_TOLERANCE:
            info["error"] = (f"narration {segment.video_id!r} ends at frame {segment.stop_frame} but the video has "
                             f"{probe['frames']} frames")
        info["ok"] = probe["ok"] and not info["error"]
        if info["ok"]:
            info.update(size_bytes=os.path.getsize(segment.path), sha256=file_sha256(segment.path))
        return info
    paths = [Path(segment.path) / epic_frame_name(f) for f in range(segment.start_frame, segment.stop_frame + 1)]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        info["error"] = f"narration {segment.video_id!r}: {len(absent)} frame(s) absent, e.g. {absent[0]}"
        return info
    try:
        wanted = range(segment.start_frame, segment.stop_frame + 1) if verify == "full" else [segment.start_frame]
        first = read_jpeg_frames(segment.path, wanted)
    except VideoDecodeError as exc:
        info["error"] = str(exc)
        return info
    digest, size = hashlib.sha256(), 0
    for p in paths:
        data = p.read_bytes()
        digest.update(data)
        size += len(data)
    info.update(width=int(first.shape[2]), height=int(first.shape[1]), ok=True, size_bytes=size,
                sha256=digest.hexdigest())
    return info


def _timestamp(seconds: float) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


def _frame(verb: int, noun: int, t: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A learnable frame: the noun sets the square's colour, the verb its motion direction."""
    img = rng.integers(0, 24, size=(size, size, 3), dtype=np.uint8)
    side = max(4, size // 4)
    colour = np.array([(noun * 97) % 256, (noun * 61 + 128) % 256, (noun * 31 + 64) % 256], dtype=np.uint8)
    dx, dy = [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1)][verb % 6]
    c = size // 2 - side // 2
    x = int(np.clip(c + dx * t, 0, size - side))
    y = int(np.clip(c + dy * t, 0, size - side))
    img[y:y + side, x:x + side] = colour
    return img


def write_epic_fixture(root: str | os.PathLike, *, participants: Sequence[str] = ("P01", "P02"),
                       videos_per_participant: int = 1, segments_per_video: int = 4, segment_frames: int = 8,
                       gap: int = 2, num_verbs: int = 3, num_nouns: int = 4, validation_every: int = 3,
                       size: int = 32, fps: int = 50, source: str = "frames", seed: int = 0) -> Path:
    """A tiny EPIC-KITCHENS-100 in its layout under ``root``: class lists of ``num_verbs`` verbs
    and ``num_nouns`` nouns, and per video ``segments_per_video`` narrations of ``segment_frames``
    frames separated by ``gap`` background frames. Narration k (in writing order) has verb
    k mod V and noun (k mod V + k div V) mod N: rounds of every verb, the nouns shifted by one each
    round; rounds 1, 1 + ``validation_every``, ... go to the validation CSV, so every verb is in
    both files (and with >= 3 training rounds every noun is in training). ``source``: "frames" (JPEG
    folders), "video" (one .MP4 per video) or "both". Timestamps are written at ``fps`` and agree
    with the frame columns (:func:`dtkd.data.formats.epic_frame_range`). Returns ``root``."""
    from PIL import Image

    if source not in ("frames", "video", "both"):
        raise ValueError(f"source={source!r}; expected frames, video or both")
    if validation_every < 2:
        raise ValueError(f"validation_every={validation_every}: need >= 2 (round 1 goes to validation)")
    root = Path(root)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for head, count in (("verb", num_verbs), ("noun", num_nouns)):
        with open(ann / EPIC_CLASS_FILES[head], "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "key", "instances", "category"])
            for i in range(count):
                w.writerow([i, f"{head}{i}", f"['{head}{i}']", "fixture"])
    rows = {"train": [], "validation": []}
    k = 0
    for p in participants:
        for v in range(videos_per_participant):
            vid = f"{p}_{v + 1:02d}"
            frames = [_frame(0, 0, 0, size, rng) for _ in range(gap)]
            for s in range(segments_per_video):
                rnd = k // num_verbs  # rounds of every verb; the nouns shift by one each round
                verb, noun = k % num_verbs, (k % num_verbs + rnd) % num_nouns
                start = len(frames) + 1
                frames += [_frame(verb, noun, t, size, rng) for t in range(segment_frames)]
                frames += [_frame(0, 0, 0, size, rng) for _ in range(gap)]
                stop = start + segment_frames - 1
                fold = "validation" if rnd % validation_every == 1 else "train"
                rows[fold].append({
                    "narration_id": f"{vid}_{s}", "participant_id": p, "video_id": vid,
                    "narration_timestamp": _timestamp((start - 1) / fps), "start_timestamp": _timestamp((start - 1) / fps),
                    "stop_timestamp": _timestamp(stop / fps), "start_frame": start, "stop_frame": stop,
                    "narration": f"verb{verb} noun{noun}", "verb": f"verb{verb}", "verb_class": verb,
                    "noun": f"noun{noun}", "noun_class": noun, "all_nouns": f"['noun{noun}']",
                    "all_noun_classes": f"[{noun}]"})
                k += 1
            if source in ("frames", "both"):
                folder = root / p / "rgb_frames" / vid
                folder.mkdir(parents=True, exist_ok=True)
                for i, img in enumerate(frames, 1):
                    Image.fromarray(img).save(folder / epic_frame_name(i), quality=95)
            if source in ("video", "both"):
                write_video(root / p / "videos" / f"{vid}.MP4", np.stack(frames), fps=fps)
    for fold, name in EPIC_FILES.items():
        with open(ann / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=EPIC_COLUMNS)
            w.writeheader()
            w.writerows(rows[fold])
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dtkd.data.epic ROOT [--source frames|video|both] ...``: write the fixture."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dtkd.data.epic", description=write_epic_fixture.__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--source", default="frames", choices=("frames", "video", "both"))
    p.add_argument("--participants", type=int, default=2)
    p.add_argument("--videos-per-participant", type=int, default=1)
    p.add_argument("--segments-per-video", type=int, default=4)
    p.add_argument("--segment-frames", type=int, default=8)
    p.add_argument("--verbs", type=int, default=3)
    p.add_argument("--nouns", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = write_epic_fixture(a.root, participants=[f"P{i + 1:02d}" for i in range(a.participants)],
                              videos_per_participant=a.videos_per_participant, segments_per_video=a.segments_per_video,
                              segment_frames=a.segment_frames, num_verbs=a.verbs, num_nouns=a.nouns, size=a.size,
                              source=a.source, seed=a.seed)
    print(f"{root}: EPIC-KITCHENS-100 fixture ({a.participants} participants, {a.verbs} verbs, {a.nouns} nouns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
