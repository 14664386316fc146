"""One manifest table for every dataset: annotations (formats.py) + per-video probe."""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from dtkd.data.errors import VideoDecodeError
from dtkd.data.formats import DATASETS, MultiHeadIndex
from dtkd.data.video import probe_video
from dtkd.fsutil import file_sha256

# size_bytes and sha256: each file's content identity, computed once here and reused by the
# fingerprint, the checkpoint and cache keys, and the quality gate's duplicate check.
MANIFEST_COLUMNS = ["video_id", "path", "label", "label_idx", "split", "frames", "fps", "width", "height",
                    "size_bytes", "sha256"]
FLAG_COLUMNS = ["ok", "error"]
ON_ERROR = ("raise", "flag", "skip")
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "unlabelled": 3}
UNLABELLED = -1  # label_idx of a transfer-set clip (split "unlabelled")
# A multi-head dataset's manifest (e.g. EPIC-KITCHENS-100) adds: the segment (start_frame,
# stop_frame, 1-based inclusive, in the source at ``path``; ``source`` "frames" or "video"), the
# per-head class indices ``label_<head>``, and ``heads`` ("verb:97,noun:300", the same on every
# row). ``label`` is then the action ("<verb>/<noun>") and ``label_idx`` its HeadLayout code.
SEGMENT_COLUMNS = ["source", "start_frame", "stop_frame", "heads"]


def build_manifest(
    dataset: str,
    root: str | os.PathLike,
    *,
    split: int = 1,
    on_error: str = "raise",
    verify: str = "first_frame",
    workers: int = 1,
    **kw,
) -> pd.DataFrame:
    """Annotations of `dataset` (a name in DATASETS) under `root`, fold `split`, probed.

    Columns: MANIFEST_COLUMNS; ``label_idx`` indexes the sorted class names of the whole
    dataset; rows are ordered by split (train, val, test), then label, then video_id, so a row's
    position within its split is stable. A missing or undecodable video:
    ``on_error="raise"`` raises VideoDecodeError naming it; ``"flag"`` keeps the row with zeros
    and adds columns ``ok`` and ``error`` (to all rows) for a quality gate; ``"skip"`` drops it
    with a warning. Extra keyword arguments go to the dataset's reader.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR}")
    reader = DATASETS.get(dataset)
    index = reader(root, split, **kw)
    if not index.entries:
        raise ValueError(f"{dataset} under {root}: the annotations of split {split} list no videos")
    classes = sorted(index.classes)
    position = {name: i for i, name in enumerate(classes)}
    seen: dict[str, str] = {}
    for e in index.entries:
        if e.video_id in seen:
            raise ValueError(f"{dataset}: video_id {e.video_id!r} appears twice ({seen[e.video_id]} "
                             f"and {e.path})")
        seen[e.video_id] = str(e.path)
    if isinstance(index, MultiHeadIndex) and index.heads:
        return segment_manifest(index, on_error=on_error, verify=verify, workers=workers, what=dataset)

    return probed_manifest(index.entries, position, on_error=on_error, verify=verify, workers=workers, what=dataset)


def probed_manifest(entries, position: dict[str, int], *, on_error: str = "raise", verify: str = "first_frame",
                    workers: int = 1, what: str = "dataset") -> pd.DataFrame:
    """Manifest rows of ``entries`` (``label_idx`` from ``position``, -1 for an unlabelled clip),
    each video probed; ``on_error`` as in :func:`build_manifest`."""
    paths = [os.path.abspath(e.path) for e in entries]
    probe = lambda p: {**probe_video(p, verify=verify), **file_identity(p)}  # noqa: E731
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            probes = list(pool.map(probe, paths))
    else:
        probes = [probe(p) for p in paths]

    def row_of(e, info) -> dict:
        return dict(video_id=e.video_id, path=os.path.abspath(e.path), label=e.label,
                    label_idx=UNLABELLED if e.split == "unlabelled" else position[e.label],
                    split=e.split, frames=info["frames"], fps=info["fps"], width=info["width"],
                    height=info["height"], size_bytes=info["size_bytes"], sha256=info["sha256"])

    rows = _manifest_rows(entries, probes, row_of, on_error=on_error, what=what, kind="videos")
    return _manifest_frame(rows, MANIFEST_COLUMNS, {}, on_error=on_error)


def _manifest_rows(entries, probes, row_of, *, on_error: str, what: str, kind: str) -> list[dict]:
    """One row per entry (``row_of(entry, probe)``), ``on_error`` applied to failed probes:
    raise, flag (``ok``/``error`` columns) or skip (with one warning naming the first)."""
    rows, bad = [], []
    for e, info in zip(entries, probes):
        if not info["ok"]:
            if on_error == "raise":
                raise VideoDecodeError(os.path.abspath(e.path), info["error"])
            bad.append(f"{os.path.abspath(e.path)} ({info['error']})")
            if on_error == "skip":
                continue
        row = row_of(e, info)
        if on_error == "flag":
            row.update(ok=info["ok"], error=info["error"])
        rows.append(row)
    if bad and on_error == "skip":
        warnings.warn(f"{what}: skipped {len(bad)} unreadable {kind}, e.g. {bad[0]}", stacklevel=3)
    return rows


def _manifest_frame(rows: list[dict], columns: list[str], dtypes: dict[str, str], *, on_error: str) -> pd.DataFrame:
    """The manifest table: typed columns, rows in split order (train, val, test, unlabelled),
    then by label and video_id."""
    df = pd.DataFrame(rows, columns=columns + (FLAG_COLUMNS if on_error == "flag" else []))
    df = df.astype({"label_idx": "int64", "frames": "int64", "fps": "float64", "width": "int64",
                    "height": "int64", "size_bytes": "int64", "sha256": "str", **dtypes})
    order = df["split"].map(_SPLIT_ORDER)
    df = df.assign(_order=order).sort_values(["_order", "label", "video_id"], kind="stable")
    return df.drop(columns="_order").reset_index(drop=True)


def segment_manifest(index: MultiHeadIndex, *, on_error: str = "raise", verify: str = "first_frame",
                     workers: int = 1, what: str = "dataset") -> pd.DataFrame:
    """Manifest rows of a multi-head index of segments (formats.Segment), each probed with
    dtkd.data.epic.probe_segment; columns MANIFEST_COLUMNS + label_<head> + SEGMENT_COLUMNS;
    ``on_error`` as in :func:`build_manifest` (a video source is hashed once, not per segment)."""
    from dtkd.data.epic import probe_segment
    from dtkd.data.heads import HeadLayout

    layout = HeadLayout.of({h: len(names) for h, names in index.heads.items()})
    spec = layout.spec
    hashed: dict[str, dict] = {}

    def probe(e):
        if e.source == "video" and str(e.path) in hashed:  # same file: probe again (cheap), hash once
            info = probe_segment(e, verify="header" if verify == "first_frame" else verify)
            return {**info, **{k: hashed[str(e.path)][k] for k in ("size_bytes", "sha256")}}
        info = probe_segment(e, verify=verify)
        if e.source == "video":
            hashed[str(e.path)] = info
        return info

    probes = [probe(e) for e in index.entries] if workers <= 1 else list(ThreadPoolExecutor(workers).map(probe, index.entries))
    def row_of(e, info) -> dict:
        labels = dict(e.labels)
        code = int(layout.encode({h: [labels[h]] for h in layout.names})[0])
        return dict(video_id=e.video_id, path=os.path.abspath(e.path),
                    label="/".join(index.heads[h][labels[h]] for h in layout.names), label_idx=code, split=e.split,
                    frames=info["frames"], fps=info["fps"], width=info["width"], height=info["height"],
                    size_bytes=info["size_bytes"], sha256=info["sha256"],
                    **{f"label_{h}": labels[h] for h in layout.names},
                    source=e.source, start_frame=e.start_frame, stop_frame=e.stop_frame, heads=spec)

    rows = _manifest_rows(index.entries, probes, row_of, on_error=on_error, what=what, kind="segments")
    head_columns = [f"label_{h}" for h in layout.names]
    return _manifest_frame(rows, MANIFEST_COLUMNS + head_columns + SEGMENT_COLUMNS,
                           {"start_frame": "int64", "stop_frame": "int64", **{c: "int64" for c in head_columns}},
                           on_error=on_error)


def heads_of(manifest: pd.DataFrame):
    """The HeadLayout of a multi-head manifest (its ``heads`` column), or None."""
    from dtkd.data.heads import HeadLayout

    if "heads" not in manifest.columns or manifest.empty:
        return None
    specs = manifest["heads"].dropna().unique().tolist()
    if len(specs) != 1:
        raise ValueError(f"manifest: the heads column must hold one layout, got {specs[:3]}")
    return HeadLayout.parse(specs[0])


def head_class_names(manifest: pd.DataFrame, head: str) -> list[str]:
    """Class names of one head of a multi-head manifest in index order, from its ``label``
    ("<verb>/<noun>") and ``label_<head>`` columns; a class no row carries is named by its index."""
    heads = heads_of(manifest)
    if heads is None or head not in heads.names:
        raise ValueError(f"manifest has no head {head!r} (heads: {heads.as_dict() if heads else 'none'})")
    pos = heads.names.index(head)
    names = [str(i) for i in range(heads.sizes[pos])]
    for idx, label in zip(manifest[f"label_{head}"], manifest["label"].astype(str)):
        names[int(idx)] = label.split("/")[pos]
    return names


def carve_validation(manifest: pd.DataFrame, fraction: float, *, seed: int = 0) -> pd.DataFrame:
    """Move ``fraction`` of each class's train clips to a ``val`` split, deterministically: a
    class's train clips are ordered by sha256(seed, video_id) and the first round(fraction * n)
    move (at least one when fraction > 0; at least one stays in train). The same manifest, fraction
    and seed always give the same split, whatever order the rows come in. Rows keep the manifest's
    order convention (split, then label, then video_id)."""
    import hashlib

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return manifest
    if (manifest["split"] == "val").any():
        raise ValueError("the dataset already has a 'val' split; a carve-out from train would mix two "
                         "validation sets (set data.val.fraction: 0)")
    df = manifest.copy()
    train = df[df["split"] == "train"]
    moved = []
    for label, rows in train.groupby("label", sort=True):
        if len(rows) < 2:
            raise ValueError(f"class {label!r} has {len(rows)} train clip(s): too few to carve a validation clip out")
        ranked = sorted(rows.index, key=lambda i: hashlib.sha256(f"{seed}:{df.at[i, 'video_id']}".encode()).hexdigest())
        k = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        moved += ranked[:k]
    df.loc[moved, "split"] = "val"
    order = df["split"].map(_SPLIT_ORDER)
    df = df.assign(_order=order).sort_values(["_order", "label", "video_id"], kind="stable")
    return df.drop(columns="_order").reset_index(drop=True)


def file_identity(path: str | os.PathLike) -> dict:
    """``{"size_bytes", "sha256"}`` of a file's bytes (0 and "" for a file that cannot be read:
    the probe has flagged it already)."""
    try:
        return {"size_bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    except OSError:
        return {"size_bytes": 0, "sha256": ""}


def known_sha256(manifest: pd.DataFrame) -> list[str]:
    """The manifest's per-file hashes in row order, "" where it has none (a hand-built manifest,
    an unreadable file): callers hash those files themselves."""
    if "sha256" not in manifest.columns:
        return [""] * len(manifest)
    return ["" if not isinstance(v, str) else v for v in manifest["sha256"]]


def manifest_fingerprint(manifest: pd.DataFrame, split: str | None = None) -> str:
    """Names the data a model saw or was tested on, independently of where the files lie:
    sha256 over the sorted (video_id, label, split, file sha256) rows (of one split). The file
    contents are part of it: new bytes under old names are new data (a resumed checkpoint or a
    cached step from the old bytes would be stale). A manifest without the ``sha256`` column
    (built by hand) is named by its rows alone."""
    import hashlib

    df = manifest if split is None else manifest[manifest["split"] == split]
    content = known_sha256(df)
    rows = sorted(f"{v}\t{lab}\t{s}\t{c}" if c else f"{v}\t{lab}\t{s}"
                  for v, lab, s, c in zip(df["video_id"], df["label"], df["split"], content))
    return "manifest:" + hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def num_classes_of(manifest: pd.DataFrame) -> int:
    """Classes of a single-label manifest (the largest label_idx + 1); of a multi-head one, the
    label codes (the product of the heads' class counts: the actions)."""
    heads = heads_of(manifest)
    if heads is not None:
        return heads.combinations
    return int(manifest["label_idx"].max()) + 1


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Class names in label_idx order (only those present in the manifest)."""
    labelled = manifest[manifest["label_idx"] >= 0]
    pairs = labelled[["label_idx", "label"]].drop_duplicates().sort_values("label_idx")
    return pairs["label"].tolist()
