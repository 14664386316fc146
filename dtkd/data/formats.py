"""Dataset annotation formats -> labelled video entries, one reader per dataset name.

Each reader takes ``(root, split, **kw)`` and returns ``DatasetIndex(entries, classes)`` where
every entry is ``Entry(video_id, path, label, split)`` and ``classes`` lists every class name of
the dataset (also those absent from this fold), so label indices agree across folds.
Readers only parse annotations; probing the files is the manifest's job.
"""
from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from dtkd.data.errors import AnnotationError
from dtkd.registry import Registry


@dataclass(frozen=True)
class Entry:
    video_id: str
    path: Path
    label: str
    split: str  # "train" | "val" | "test"


@dataclass(frozen=True)
class DatasetIndex:
    entries: list[Entry]
    classes: list[str]


DATASETS: Registry = Registry("dataset")


def _check_fold(name: str, split: int, folds: tuple[int, ...]) -> None:
    if split not in folds:
        raise ValueError(f"{name}: split={split!r}; this dataset has official splits {list(folds)}")


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty stripped lines with 1-based numbers; tolerates CRLF (UCF101 lists use it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise AnnotationError(path, f"line {line}", f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                              f"{err.start}); re-save the file as UTF-8") from None
    except PermissionError as err:
        raise PermissionError(f"{path}: cannot read the annotation file ({err.strerror})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


# --- HMDB51 (and the synthetic set, which is written in its layout) -------------------------

HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"
_HMDB_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<fold>[123])\.txt$")
_HMDB_IDS = {"1": "train", "2": "test", "0": None}


def read_hmdb51(root: str | os.PathLike, split: int = 1, *, video_dir: str | os.PathLike | None = None,
                split_dir: str = HMDB_SPLIT_DIR, ids: dict[str, str | None] | None = None) -> DatasetIndex:
    """``root/<class>/<video>.avi`` and ``root/testTrainMulti_7030_splits/<class>_test_split<k>.txt``
    with lines ``<video>.avi <id>`` (1 = train, 2 = test, 0 = not used in this fold)."""
    _check_fold("hmdb51", split, (1, 2, 3))
    root = Path(root)
    videos = Path(video_dir) if video_dir is not None else root
    splits = root / split_dir
    if not splits.is_dir():
        raise FileNotFoundError(f"{splits}: HMDB51 split directory not found")
    files = {}
    for f in sorted(splits.iterdir()):
        m = _HMDB_FILE.match(f.name)
        if m:
            files.setdefault(m["label"], {})[int(m["fold"])] = f
    if not files:
        raise FileNotFoundError(f"{splits}: no <class>_test_split<k>.txt files")
    ids = ids or _HMDB_IDS
    expected = "|".join(sorted(ids))
    entries = []
    for label, folds in sorted(files.items()):
        if split not in folds:
            raise FileNotFoundError(f"{splits / f'{label}_test_split{split}.txt'}: missing for class {label!r}")
        f = folds[split]
        for n, line in _lines(f):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ids:
                raise AnnotationError(f, f"line {n}", f"expected '<video>.avi <{expected}>', got {line!r}")
            name, sid = parts
            if ids[sid] is None:
                continue
            entries.append(Entry(Path(name).stem, videos / label / name, label, ids[sid]))
    return DatasetIndex(entries, sorted(files))


DATASETS.register("hmdb51")(read_hmdb51)


@DATASETS.register("synthetic")
def read_synthetic(root: str | os.PathLike, split: int = 1, **kw) -> DatasetIndex:
    """The generator's output: the HMDB51 layout (see dtkd.data.synthetic), plus id 3 = val."""
    return read_hmdb51(root, split, ids={**_HMDB_IDS, "3": "val"}, **kw)


# --- UCF101 -----------------------------------------------------------------------------------

@DATASETS.register("ucf101")
def read_ucf101(root: str | os.PathLike, split: int = 1, *, list_dir: str = "ucfTrainTestlist",
                video_dir: str = "UCF-101") -> DatasetIndex:
    """``root/ucfTrainTestlist/{classInd.txt, trainlist0k.txt, testlist0k.txt}`` and videos
    ``root/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (list paths are relative to UCF-101/)."""
    _check_fold("ucf101", split, (1, 2, 3))
    root = Path(root)
    lists, videos = root / list_dir, root / video_dir
    class_file = lists / "classInd.txt"
    classes = []
    for n, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(class_file, f"line {n}", f"expected '<index> <Class>', got {line!r}")
        classes.append(parts[1])
    known = set(classes)
    entries = []
    for split_name, list_file in (("train", lists / f"trainlist0{split}.txt"),
                                  ("test", lists / f"testlist0{split}.txt")):
        for n, line in _lines(list_file):
            rel = line.split()[0]  # train lines end with a 1-based class index; test lines do not
            label = rel.replace("\\", "/").split("/")[0]
            if "/" not in rel.replace("\\", "/") or label not in known:
                raise AnnotationError(list_file, f"line {n}",
                                      f"{rel!r} is not '<Class>/<video>.avi' with a class of {class_file.name}")
            entries.append(Entry(Path(rel).stem, videos / rel.replace("\\", "/"), label, split_name))
    return DatasetIndex(entries, classes)


# --- Kinetics (400/600/700) --------------------------------------------------------------------

_KINETICS_SPLITS = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}
_KINETICS_COLUMNS = {"youtube_id", "time_start", "time_end", "label", "split"}


def _kinetics_csvs(root: Path, csv_files) -> list[Path]:
    if csv_files:
        return [Path(c) if Path(c).is_absolute() else root / c for c in csv_files]
    for folder in (root / "annotations", root):
        found = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if found:
            return found
    raise FileNotFoundError(f"{root}: no Kinetics CSV in annotations/ or the root")


def _kinetics_video(root: Path, split_value: str, label: str, name: str) -> Path:
    """``<split>/<label>/<name>``; the label folder may use underscores for spaces."""
    candidates = [root / split_value / label / name, root / split_value / label.replace(" ", "_") / name]
    return next((c for c in candidates if c.exists()), candidates[0])


@DATASETS.register("kinetics")
def read_kinetics(root: str | os.PathLike, split: int = 1, *, csv_files=None) -> DatasetIndex:
    """CSV rows ``youtube_id,time_start,time_end,label,split`` (any column order, extra columns
    ignored) and videos ``root/<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``.
    Rows without a label (a held-out test set) are skipped."""
    _check_fold("kinetics", split, (1,))
    root = Path(root)
    entries, classes, unlabelled = [], set(), 0
    for csv_path in _kinetics_csvs(root, csv_files):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = _KINETICS_COLUMNS - set(reader.fieldnames or [])
            if missing:
                raise AnnotationError(csv_path, "header", f"missing columns {sorted(missing)}")
            for n, row in enumerate(reader, 2):
                label, raw_split = row["label"].strip(), row["split"].strip()
                if raw_split not in _KINETICS_SPLITS:
                    raise AnnotationError(csv_path, f"line {n}", f"split {raw_split!r} is not one of "
                                                                f"{sorted(_KINETICS_SPLITS)}")
                if not label:
                    unlabelled += 1
                    continue
                try:
                    start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                except ValueError:
                    raise AnnotationError(csv_path, f"line {n}", f"time_start/time_end not numbers: "
                                                                f"{row['time_start']!r}, {row['time_end']!r}") from None
                vid = f"{row['youtube_id'].strip()}_{start:06d}_{end:06d}"
                classes.add(label)
                entries.append(Entry(vid, _kinetics_video(root, raw_split, label, f"{vid}.mp4"), label,
                                     _KINETICS_SPLITS[raw_split]))
    if unlabelled:
        warnings.warn(f"kinetics: skipped {unlabelled} rows without a label under {root}", stacklevel=2)
    return DatasetIndex(entries, sorted(classes))


# --- Something-Something v2 ---------------------------------------------------------------------

def _ssv2_class(template: str) -> str:
    # Templates mark placeholders as "[something]"; labels.json keys have no brackets.
    return template.replace("[", "").replace("]", "")


@DATASETS.register("ssv2")
def read_ssv2(root: str | os.PathLike, split: int = 1, *, video_dir: str | os.PathLike | None = None
              ) -> DatasetIndex:
    """``labels.json`` {template: index}, ``train.json`` / ``validation.json`` lists of
    {id, label, template, placeholders} (in ``root/labels/`` or ``root``), videos ``<id>.webm``
    in ``root/20bn-something-something-v2/``, ``root/videos/`` or ``root``."""
    _check_fold("ssv2", split, (1,))
    root = Path(root)
    ann = root / "labels" if (root / "labels" / "labels.json").is_file() else root
    labels_file = ann / "labels.json"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file}: SSv2 labels.json not found (also looked in {root / 'labels'})")
    if video_dir is not None:
        videos = Path(video_dir)
    else:
        videos = next((d for d in (root / "20bn-something-something-v2", root / "videos") if d.is_dir()), root)
    try:
        classes = list(json.loads(labels_file.read_text()))
    except json.JSONDecodeError as exc:
        raise AnnotationError(labels_file, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
    known = set(classes)
    entries = []
    for split_name, name in (("train", "train.json"), ("val", "validation.json")):
        path = ann / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: SSv2 {split_name} annotations not found")
        try:
            items = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise AnnotationError(path, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
        for k, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise AnnotationError(path, f"entry {k}", "expected an object with 'id' and 'template'")
            label = _ssv2_class(item["template"])
            if label not in known:
                raise AnnotationError(path, f"entry {k} (id {item['id']})",
                                      f"template {item['template']!r} is not a class of {labels_file.name}")
            vid = str(item["id"])
            entries.append(Entry(vid, videos / f"{vid}.webm", label, split_name))
    return DatasetIndex(entries, classes)


# --- EPIC-KITCHENS-100 ---------------------------------------------------------------------------
# One clip = one narration segment [start_frame, stop_frame] (1-based, inclusive: EPIC's frame
# files start at frame_0000000001.jpg) of a long video, with one label per head (verb, noun).

EPIC_FILES = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}
EPIC_CLASS_FILES = {"verb": "EPIC_100_verb_classes.csv", "noun": "EPIC_100_noun_classes.csv"}
EPIC_HEADS = ("verb", "noun")
_EPIC_REQUIRED = ("narration_id", "participant_id", "video_id", "verb_class", "noun_class")
_EPIC_TIME = re.compile(r"^(?P<h>\d+):(?P<m>[0-5]?\d):(?P<s>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Segment(Entry):
    """A narration segment: ``path`` is its source (a JPEG frame folder or a video), frames
    ``start_frame..stop_frame`` of it (1-based, inclusive), one class index per head."""

    participant_id: str = ""
    source: str = "frames"  # "frames": <path>/frame_%010d.jpg; "video": a video file
    start_frame: int = 1
    stop_frame: int = 1
    labels: tuple[tuple[str, int], ...] = ()  # ((head, class index), ...) in EPIC_HEADS order
    fps: float = 0.0  # frame rate of a frame folder (the reader's ``fps``); a video's comes from its probe

    @property
    def num_frames(self) -> int:
        return self.stop_frame - self.start_frame + 1


@dataclass(frozen=True)
class MultiHeadIndex(DatasetIndex):
    """A DatasetIndex whose entries carry one label per head: ``heads`` = {head: class names in
    index order}. ``classes``/``Entry.label`` hold the first head's, for single-label consumers."""

    heads: dict[str, list[str]] | None = None


def epic_timestamp(value: str) -> float:
    """``HH:MM:SS.ff`` (EPIC's timestamps) -> seconds."""
    m = _EPIC_TIME.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a HH:MM:SS.ff timestamp")
    return int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])


def epic_frame_range(start_s: float, stop_s: float, fps: float) -> tuple[int, int]:
    """The 1-based inclusive frames of [start_s, stop_s] at ``fps``: frame f shows [(f-1)/fps,
    f/fps), so start = floor(start_s * fps) + 1 and stop = max(start, ceil(stop_s * fps))."""
    import math

    start = math.floor(start_s * fps + 1e-9) + 1
    return start, max(start, math.ceil(stop_s * fps - 1e-9))


def _epic_classes(path: Path, head: str) -> list[str]:
    """``id,key,...`` rows -> keys in id order; ids must be 0..N-1."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EPIC {head} class list not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"id", "key"} - set(reader.fieldnames or [])
        if missing:
            raise AnnotationError(path, "header", f"missing columns {sorted(missing)}")
        keys: dict[int, str] = {}
        for n, row in enumerate(reader, 2):
            try:
                keys[int(row["id"])] = row["key"].strip()
            except ValueError:
                raise AnnotationError(path, f"line {n}", f"id {row['id']!r} is not an integer") from None
    if sorted(keys) != list(range(len(keys))) or not keys:
        raise AnnotationError(path, "id", f"ids must be 0..N-1 without gaps, got {len(keys)} ids up to "
                              f"{max(keys, default=None)}")
    return [keys[i] for i in range(len(keys))]


def _epic_int(csv_path: Path, n: int, row: dict, field: str) -> int:
    try:
        return int(row[field])
    except (TypeError, ValueError):
        raise AnnotationError(csv_path, f"line {n}", f"{field} {row[field]!r} is not an integer") from None


@DATASETS.register("epic_kitchens100")
def read_epic_kitchens(root: str | os.PathLike, split: int = 1, *, annotation_dir: str | None = None,
                       source: str = "auto", segments: str = "auto", fps: float = 50.0,
                       frames_dir: str = "rgb_frames", video_dir: str = "videos", video_ext: str = ".MP4",
                       validation_split: str = "test") -> MultiHeadIndex:
    """EPIC-KITCHENS-100: ``EPIC_100_train.csv`` / ``EPIC_100_validation.csv`` and the class lists
    ``EPIC_100_{verb,noun}_classes.csv`` in ``root/<annotation_dir>`` (default: ``root/annotations``
    if it has them, else ``root``). One entry per narration (``video_id`` = its narration_id);
    sources ``root/<P>/rgb_frames/<video_id>/frame_0000000001.jpg`` (``source="frames"``) or
    ``root/<P>/videos/<video_id>.MP4`` (``"video"``; ``"auto"``: frames where the folder exists).

    ``segments``: ``"frames"`` reads start_frame/stop_frame, ``"timestamps"`` converts
    start_timestamp/stop_timestamp at ``fps`` (:func:`epic_frame_range`), ``"auto"`` uses the
    frame columns when the CSV has them. The validation CSV becomes split ``validation_split``
    ("test": where results are reported, the test labels being withheld; or "val"). A segment's
    frame folder and its first and last frame files must exist (a frame count for a video source
    is the manifest's probe). Errors name the CSV, line, narration and field.
    """
    _check_fold("epic_kitchens100", split, (1,))
    if source not in ("auto", "frames", "video"):
        raise ValueError(f"epic_kitchens100: source={source!r}; expected auto, frames or video")
    if segments not in ("auto", "frames", "timestamps"):
        raise ValueError(f"epic_kitchens100: segments={segments!r}; expected auto, frames or timestamps")
    if validation_split not in ("val", "test"):
        raise ValueError(f"epic_kitchens100: validation_split={validation_split!r}; expected val or test")
    if fps <= 0:
        raise ValueError(f"epic_kitchens100: fps must be > 0, got {fps}")
    root = Path(root)
    if annotation_dir is not None:
        ann = root / annotation_dir
    else:
        ann = root / "annotations" if (root / "annotations" / EPIC_FILES["train"]).is_file() else root
    heads = {h: _epic_classes(ann / f, h) for h, f in EPIC_CLASS_FILES.items()}
    entries: list[Segment] = []
    for fold, name in EPIC_FILES.items():
        csv_path = ann / name
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: EPIC-KITCHENS-100 {fold} annotations not found")
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            use = segments
            if use == "auto":
                use = "frames" if {"start_frame", "stop_frame"} <= columns else "timestamps"
            timing = ("start_frame", "stop_frame") if use == "frames" else ("start_timestamp", "stop_timestamp")
            missing = [c for c in (*_EPIC_REQUIRED, *timing) if c not in columns]
            if missing:
                raise AnnotationError(csv_path, "header", f"missing columns {missing}")
            for n, row in enumerate(reader, 2):
                nid, pid, vid = (row[c].strip() for c in ("narration_id", "participant_id", "video_id"))
                where = f"line {n}, narration {nid!r}"
                labels = []
                for head in EPIC_HEADS:
                    k = _epic_int(csv_path, n, row, f"{head}_class")
                    if not 0 <= k < len(heads[head]):
                        raise AnnotationError(csv_path, where, f"{head}_class {k} is not an id of "
                                              f"{EPIC_CLASS_FILES[head]} (0..{len(heads[head]) - 1})")
                    labels.append((head, k))
                if use == "frames":
                    start, stop = (_epic_int(csv_path, n, row, c) for c in timing)
                else:
                    try:
                        start, stop = epic_frame_range(*(epic_timestamp(row[c]) for c in timing), fps)
                    except ValueError as err:
                        raise AnnotationError(csv_path, where, str(err)) from None
                if not 1 <= start <= stop:
                    raise AnnotationError(csv_path, where, f"segment frames {start}..{stop}: need 1 <= start <= stop")
                folder = root / pid / frames_dir / vid
                kind = source if source != "auto" else ("frames" if folder.is_dir() else "video")
                path = folder if kind == "frames" else root / pid / video_dir / f"{vid}{video_ext}"
                if kind == "frames":
                    for f in (start, stop):
                        if not (folder / epic_frame_name(f)).is_file():
                            raise FileNotFoundError(f"{folder / epic_frame_name(f)}: frame {f} of narration {nid!r} "
                                                    f"({csv_path.name} line {n}, frames {start}..{stop}) is absent")
                elif not path.is_file():
                    raise FileNotFoundError(f"{path}: video of narration {nid!r} ({csv_path.name} line {n}) not "
                                            f"found (nor its frame folder {folder})")
                split_name = "train" if fold == "train" else validation_split
                entries.append(Segment(nid, path, heads[EPIC_HEADS[0]][labels[0][1]], split_name,
                                       participant_id=pid, source=kind, start_frame=start, stop_frame=stop,
                                       labels=tuple(labels), fps=float(fps)))
    return MultiHeadIndex(entries, list(heads[EPIC_HEADS[0]]), heads=heads)


def epic_frame_name(frame: int) -> str:
    """EPIC's JPEG name of 1-based frame ``frame``."""
    return f"frame_{frame:010d}.jpg"
