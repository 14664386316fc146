"""Pre-decoded clip store: decode every video once into memory-mapped uint8 shards.

Layout of a store directory::

    index.json         format, short_side, fingerprint, per-video shard/offset/shape/source
    shard-00000.u8     raw uint8 frames, (T, H, W, 3) per video, videos back to back
    ...

Frames are resized so that their short side is ``short_side`` (never enlarged; ``None`` keeps
the decoded size, which makes reads bit-identical to decoding on the fly). The fingerprint is a
SHA-256 over the format, the resize setting and every video's id, shape and stored bytes, so
equal fingerprints mean equal content. The directory is written next to its final place and
renamed into it, so readers never see a half-written store.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.v2 import functional as TF

from dtkd.data.video import read_all_frames
from dtkd.fsutil import file_sha256, one_writer, staged_dir

FORMAT = "dtkd-clipstore/1"
INDEX = "index.json"


def resize_short_side(frames: torch.Tensor, short_side: int | None) -> torch.Tensor:
    """uint8 (T, H, W, C) -> same with min(H, W) == short_side (antialiased; never upsamples)."""
    if short_side is None:
        return frames
    h, w = frames.shape[1:3]
    if min(h, w) <= short_side:
        return frames
    scale = short_side / min(h, w)
    size = [short_side, max(1, round(w * scale))] if h <= w else [max(1, round(h * scale)), short_side]
    x = TF.resize(frames.permute(0, 3, 1, 2), size, antialias=True)
    return x.permute(0, 2, 3, 1).contiguous()


def _fingerprint(short_side: int | None, videos: dict[str, dict]) -> str:
    content = [FORMAT, short_side,
               [[vid, v["shape"], v["sha256"]] for vid, v in sorted(videos.items())]]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _sources(manifest: pd.DataFrame) -> dict[str, dict]:
    ids = manifest["video_id"].astype(str)
    dupes = ids[ids.duplicated()].unique().tolist()
    if dupes:
        raise ValueError(f"manifest has duplicate video_id values, e.g. {dupes[:3]}")
    # Hashed here, not taken from the manifest: the store checks the files as they are now.
    return {vid: {"path": str(path), "sha256": file_sha256(path)} for vid, path in zip(ids, manifest["path"].astype(str))}


class ClipStore:
    """Read side of a store directory. Cheap to pickle: shards are mapped lazily per process."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path}: no clip store here (build one with build_store)")
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{index_path}: format {index.get('format')!r}, expected {FORMAT!r}")
        self.short_side: int | None = index["short_side"]
        self.fingerprint: str = index["fingerprint"]
        self.videos: dict[str, dict] = index["videos"]
        self.shards: list[dict] = index["shards"]
        self._maps: dict[int, np.memmap] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.videos

    def __len__(self) -> int:
        return len(self.videos)

    def _entry(self, video_id: str) -> dict:
        try:
            return self.videos[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in the clip store {self.root}") from None

    def shape(self, video_id: str) -> tuple[int, int, int, int]:
        return tuple(self._entry(video_id)["shape"])

    def num_frames(self, video_id: str) -> int:
        return self._entry(video_id)["shape"][0]

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            path = self.root / self.shards[shard]["file"]
            self._maps[shard] = np.memmap(path, dtype=np.uint8, mode="r")
        return self._maps[shard]

    def frames(self, video_id: str) -> np.ndarray:
        """All frames of a video as a read-only (T, H, W, 3) view into the shard."""
        e = self._entry(video_id)
        n = int(np.prod(e["shape"]))
        return self._map(e["shard"])[e["offset"]:e["offset"] + n].reshape(e["shape"])

    def read(self, video_id: str, indices: Iterable[int]) -> torch.Tensor:
        """Frames at `indices` -> uint8 (T, H, W, 3); indices past the end repeat the last frame
        (the same rule as decoding, for containers that over-report their frame count)."""
        all_frames = self.frames(video_id)
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0:
            raise ValueError(f"video {video_id!r}: invalid frame indices {idx.tolist()[:8]}")
        idx = np.minimum(idx, all_frames.shape[0] - 1)
        return torch.from_numpy(np.ascontiguousarray(all_frames[idx]))

    def verify(self) -> None:
        """Re-hash every video's bytes and the fingerprint; raise ValueError naming a mismatch."""
        for vid, e in self.videos.items():
            if hashlib.sha256(self.frames(vid).tobytes()).hexdigest() != e["sha256"]:
                raise ValueError(f"{self.root}: stored frames of {vid!r} do not match their hash")
        if _fingerprint(self.short_side, self.videos) != self.fingerprint:
            raise ValueError(f"{self.root}: fingerprint does not match the index")

    def matches(self, manifest: pd.DataFrame, short_side: int | None) -> bool:
        """True if this store holds exactly the manifest's videos, unchanged, at this size."""
        if short_side != self.short_side or set(manifest["video_id"].astype(str)) != set(self.videos):
            return False
        # Content, not location: a dataset moved elsewhere still matches its store.
        sources = _sources(manifest)
        return all(self.videos[v]["source"]["sha256"] == s["sha256"] for v, s in sources.items())


def build_store(
    manifest: pd.DataFrame,
    root: str | os.PathLike,
    *,
    short_side: int | None = None,
    shard_bytes: int = 256 << 20,
    overwrite: bool = False,
) -> ClipStore:
    """Decode every manifest video once into a store at `root` and return it.

    A store already at `root` built from the same source files and `short_side` is reused.
    Another store there is replaced only with `overwrite=True`, else FileExistsError. Two
    processes building one root: the second waits and reuses the first's (fsutil.one_writer).
    """
    if "start_frame" in manifest.columns:
        raise ValueError(f"{root}: the clip store stores whole videos; a manifest of segments (a multi-head dataset "
                         "such as epic_kitchens100) is not supported yet: set data.store.enabled: false")
    root = Path(root).absolute()
    with one_writer(root, "the clip store"):
        return _build_store(manifest, root, short_side=short_side, shard_bytes=shard_bytes, overwrite=overwrite)


def _build_store(manifest: pd.DataFrame, root: Path, *, short_side: int | None, shard_bytes: int,
                 overwrite: bool) -> ClipStore:
    if len(manifest) == 0:
        raise ValueError(f"{root}: the manifest is empty; nothing to store")
    if root.exists():
        try:
            existing = ClipStore(root)
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise FileExistsError(f"{root} exists and is not a readable clip store ({exc})") from exc
        if existing.matches(manifest, short_side):
            return existing
        if not overwrite:
            raise FileExistsError(f"{root} holds a clip store of other videos or settings; "
                                  "pass overwrite=True to rebuild it")

    sources = _sources(manifest)
    paths = dict(zip(manifest["video_id"].astype(str), manifest["path"].astype(str)))
    with staged_dir(root, "the clip store") as tmp:
        videos: dict[str, dict] = {}
        shards: list[dict] = []
        handle, written = None, 0

        def new_shard():
            nonlocal handle, written
            if handle is not None:
                handle.close()
                shards[-1]["bytes"] = written
            name = f"shard-{len(shards):05d}.u8"
            shards.append({"file": name, "bytes": 0})
            handle, written = open(tmp / name, "wb"), 0

        new_shard()
        for vid, src in sources.items():
            data = resize_short_side(read_all_frames(paths[vid]), short_side).numpy()
            raw = data.tobytes()
            if written and written + len(raw) > shard_bytes:
                new_shard()
            handle.write(raw)
            # The source by content only: an absolute path would make the store's bytes (a DVC
            # output) depend on where the checkout lives.
            videos[vid] = {"shard": len(shards) - 1, "offset": written, "shape": list(data.shape),
                           "sha256": hashlib.sha256(raw).hexdigest(), "source": {"sha256": src["sha256"]}}
            written += len(raw)
        handle.close()
        shards[-1]["bytes"] = written
        index = {"format": FORMAT, "short_side": short_side,
                 "fingerprint": _fingerprint(short_side, videos), "shards": shards, "videos": videos}
        (tmp / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
    return ClipStore(root)
