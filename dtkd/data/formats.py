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
