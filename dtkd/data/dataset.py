"""ClipDataset: manifest rows -> normalised multi-view clips for training and testing."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dtkd.data.sampling import (eval_boxes, frame_indices, random_resized_box, random_window,
                                uniform_windows)
from dtkd.data.manifest import known_sha256
from dtkd.data.store import ClipStore, file_sha256
from dtkd.data.transforms import render_view
from dtkd.data.video import read_frames
from dtkd.data.views import ViewSpec

SPLITS = ("train", "val", "test", "unlabelled")  # unlabelled: label_idx -1, the transfer set
_REQUIRED = ("video_id", "path", "label_idx", "split", "frames")


def _as_view(name: str, view: Any) -> ViewSpec:
    if isinstance(view, ViewSpec):
        return view
    if isinstance(view, Mapping):
        return ViewSpec(**view)
    try:
        return ViewSpec.from_spec(view)
    except AttributeError as exc:
        raise TypeError(f"view {name!r}: expected a ViewSpec, a dict or a spec with frames/"
                        f"sampling_rate/crop_size/mean/std, got {type(view).__name__}") from exc


class ClipDataset(Dataset):
    """One item = ``{"inputs": {view: FloatTensor}, "label": int, "index": int}``.

    Train: one random window and crop box (plus flip) shared by every view; each tensor is
    (C, T, H, W). Test: ``num_clips`` uniform windows x ``num_crops`` boxes; each tensor is
    (V, C, T, H, W), V ordered clip-major. ``index`` is the row position within the split.

    Train randomness comes from ``(seed, epoch, index)`` once ``set_epoch`` has been called
    (bit-reproducible whatever the worker layout), else from torch's global RNG, which
    DataLoader reseeds in every worker.

    ``store`` (a ClipStore or its directory) serves pre-decoded frames instead of decoding.
    ``with_views(names)`` renders (and decodes) only some views, from the same windows and boxes.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        split: str | Sequence[str],
        views: Mapping[str, ViewSpec],
        train: bool,
        num_clips: int = 1,
        num_crops: int = 1,
        seed: int = 0,
        *,
        store: ClipStore | str | os.PathLike | None = None,
        backend: str = "pyav",
        train_scale: tuple[float, float] = (0.25, 1.0),
        flip: bool = True,
    ) -> None:
        splits = (split,) if isinstance(split, str) else tuple(split)
        unknown = [s for s in splits if s not in SPLITS]
        if unknown or not splits:
            raise ValueError(f"split={split!r}; expected one or more of {SPLITS}")
        split = "+".join(splits)
        missing = [c for c in _REQUIRED if c not in manifest.columns]
        if missing:
            raise ValueError(f"manifest lacks columns {missing}; has {list(manifest.columns)}")
        if not views:
            raise ValueError("views is empty: give at least one view name -> ViewSpec")
        if num_clips < 1 or num_crops < 1:
            raise ValueError(f"num_clips={num_clips}, num_crops={num_crops}: both must be >= 1")
        if train and (num_clips, num_crops) != (1, 1):
            raise ValueError("train mode renders one clip per item; num_clips and num_crops must be 1")
        rows = manifest[manifest["split"].isin(splits)].reset_index(drop=True)
        if "ok" in rows.columns:  # flagged manifests: bad videos would fail at read time
            bad = rows.loc[~rows["ok"].astype(bool), "path"].tolist()
            if bad:
                raise ValueError(f"split {split!r} has {len(bad)} videos flagged bad, e.g. {bad[0]}; "
                                 "quarantine them first")
        self.split = split
        self.views = {name: _as_view(name, v) for name, v in views.items()}
        self.train = train
        self.num_clips, self.num_crops = num_clips, num_crops
        self.seed = seed
        self.backend = backend
        self.train_scale = train_scale
        self.flip = flip
        # Process-local on purpose: dtkd.engine's SeededViews sets a per-item key inside each
        # worker, which a key shared between workers would race on.
        self._epoch: int | None = None
        # The window covers every view, rendered or not: a subset sees the same content.
        self.span = max(v.span for v in self.views.values())
        self._rendered = tuple(self.views)
        self._ids = rows["video_id"].astype(str).tolist()
        self._paths = rows["path"].astype(str).tolist()
        self._sha256 = known_sha256(rows)
        self._labels = rows["label_idx"].astype(int).tolist()
        self._frames = rows["frames"].astype(int).tolist()
        # Segments of longer sources (a multi-head manifest, e.g. EPIC-KITCHENS): frame i of a clip
        # is frame start_frame + i of its source (1-based), a JPEG folder or a video.
        self._segments = None
        if "start_frame" in rows.columns:
            self._segments = list(zip(rows["source"].astype(str), rows["start_frame"].astype(int),
                                      rows["stop_frame"].astype(int)))
        self.store = ClipStore(store) if store is not None and not isinstance(store, ClipStore) else store
        if self.store is not None:
            absent = [v for v in self._ids if v not in self.store]
            if absent:
                raise KeyError(f"clip store {self.store.root} lacks {len(absent)} videos of split "
                               f"{split!r}, e.g. {absent[0]!r}; rebuild it from this manifest")

    def __len__(self) -> int:
        return len(self._ids)

    def with_views(self, names: Iterable[str]) -> "ClipDataset":
        """The same clips rendering only ``names``: the random window, crop box and flip are drawn
        exactly as with every view, so each rendered view is identical to the full dataset's,
        but the frames only the other views need are never decoded (e.g. the teachers' views
        when their outputs come from a cache)."""
        names = tuple(names)
        unknown = [n for n in names if n not in self.views]
        if unknown or not names:
            raise ValueError(f"with_views({list(names)}): views must be a non-empty subset of {list(self.views)}")
        subset = copy.copy(self)
        subset._rendered = names
        return subset

    def content_key(self) -> str:
        """A digest of everything an item depends on but its (epoch, index) key: the clips (id,
        label, frame count, and the bytes they are read from: the clip store's fingerprint, or
        every file's SHA-256), every view (rendered or not), the split and the augmentation
        knobs. Equal keys mean equal items; a teacher cache is keyed on it."""
        if self.store is not None:
            source = ["store", self.store.fingerprint]
        else:
            source = ["files", [sha or file_sha256(p) for p, sha in zip(self._paths, self._sha256)]]
        payload = [self.split, list(zip(self._ids, self._labels, self._frames)), source,
                   *([self._segments] if self._segments is not None else []),
                   {k: v.model_dump(mode="json") for k, v in self.views.items()}, self.train, self.num_clips,
                   self.num_crops, self.seed, list(self.train_scale), self.flip, self.backend]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]

    def set_epoch(self, epoch: int) -> None:
        """Key of the train randomness in THIS process. DataLoader workers get a copy when an
        iterator starts, so call it before iterating (persistent workers keep their old copy)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int | None:
        return self._epoch

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    def _rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch
        if epoch is not None:
            return np.random.default_rng([self.seed, epoch, index])
        draw = int(torch.randint(0, 2**62, ()).item())
        return np.random.default_rng([self.seed, index, draw])

    def _num_frames(self, index: int) -> int:
        if self.store is not None:
            return self.store.num_frames(self._ids[index])
        return self._frames[index]

    def _read(self, index: int, indices: np.ndarray) -> torch.Tensor:
        if self.store is not None:
            return self.store.read(self._ids[index], indices)
        if self._segments is not None:
            from dtkd.data.epic import read_jpeg_frames

            source, start, _ = self._segments[index]
            if source == "frames":
                return read_jpeg_frames(self._paths[index], (np.asarray(indices) + start).tolist())
            return read_frames(self._paths[index], np.asarray(indices) + start - 1, backend=self.backend)
        return read_frames(self._paths[index], indices, backend=self.backend)

    def _decode_union(self, index: int, per_view: list[np.ndarray]):
        """Decode each needed frame once; return frames and, per request, positions into them."""
        union = np.unique(np.concatenate(per_view))
        frames = self._read(index, union)
        return frames, [np.searchsorted(union, idx) for idx in per_view]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips in split {self.split!r}")
        n = self._num_frames(index)
        names = list(self._rendered)
        if self.train:
            rng = self._rng(index)
            window = random_window(n, self.span, rng)
            frames, positions = self._decode_union(
                index, [frame_indices(window, self.views[k].frames) for k in names])
            box = random_resized_box(frames.shape[1], frames.shape[2], rng, scale=self.train_scale)
            flip = self.flip and bool(rng.random() < 0.5)
            inputs = {k: render_view(frames[torch.from_numpy(pos)], box, self.views[k], flip=flip)
                      for k, pos in zip(names, positions)}
        else:
            windows = uniform_windows(n, self.span, self.num_clips)
            requests = [frame_indices(w, self.views[k].frames) for k in names for w in windows]
            frames, positions = self._decode_union(index, requests)
            boxes = eval_boxes(frames.shape[1], frames.shape[2], self.num_crops)
            inputs = {}
            for v, k in enumerate(names):
                per_clip = positions[v * len(windows):(v + 1) * len(windows)]
                inputs[k] = torch.stack([render_view(frames[torch.from_numpy(pos)], box, self.views[k])
                                         for pos in per_clip for box in boxes])
        return {"inputs": inputs, "label": self._labels[index], "index": index}
