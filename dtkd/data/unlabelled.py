"""The unlabelled transfer set: videos nobody labelled, on which distillation's teacher terms
still apply (``distill.transfer_set``). ``data.unlabelled`` names them:

* a folder of videos in any layout (every file with a video extension below it, recursively);
  their ``video_id`` is ``unlabelled/<path relative to the folder>``;
* ``synthetic``: the embedded generator's pool, the clips its split files mark unused (id 0,
  ``clips_per_class.unused``), with their class names dropped.

Rows get split ``unlabelled`` and ``label_idx`` -1 (``dtkd.data.manifest.UNLABELLED``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dtkd.data.formats import Entry, read_hmdb51
from dtkd.data.manifest import probed_manifest

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
SYNTHETIC_POOL = "synthetic"


def unlabelled_entries(source: str | os.PathLike, *, synthetic_root: str | os.PathLike | None = None,
                       split: int = 1) -> list[Entry]:
    """The transfer set's videos: a folder, or ``synthetic`` (the unused clips under ``synthetic_root``)."""
    if str(source) == SYNTHETIC_POOL:
        if synthetic_root is None:
            raise ValueError("data.unlabelled: 'synthetic' is the synthetic dataset's unused clips; data.dataset is not synthetic")
        pool = read_hmdb51(synthetic_root, split, ids={"0": "unlabelled", "1": None, "2": None, "3": None}).entries
        if not pool:
            raise ValueError(f"data.unlabelled: 'synthetic', but {synthetic_root} has no unused clips "
                             "(set data.synthetic.clips_per_class.unused)")
        return [Entry(e.video_id, e.path, "", "unlabelled") for e in pool]
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.unlabelled: {folder}: folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise ValueError(f"data.unlabelled: {folder} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return [Entry(f"unlabelled/{p.relative_to(folder).as_posix()}", p, "", "unlabelled") for p in files]


def with_unlabelled(manifest: pd.DataFrame, entries: list[Entry], *, on_error: str = "raise",
                    workers: int = 1) -> pd.DataFrame:
    """``manifest`` followed by the transfer set's rows (probed like every video)."""
    clash = sorted(set(manifest["video_id"]) & {e.video_id for e in entries})
    if clash:
        raise ValueError(f"data.unlabelled: video ids also in the labelled data, e.g. {clash[0]!r}")
    rows = probed_manifest(entries, {}, on_error=on_error, workers=workers, what="data.unlabelled")
    rows = rows.reindex(columns=manifest.columns)
    return pd.concat([manifest, rows], ignore_index=True)
