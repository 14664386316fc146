"""Synthetic two-object action dataset, written as real videos in the HMDB51 layout.

    root/<class>/<class>_<clip:04d>.avi
    root/testTrainMulti_7030_splits/<class>_test_split<k>.txt   lines "<video>.avi <id>"
                                            (1 = train, 2 = test, 3 = val, 0 = unused; HMDB51 has
                                             no validation split: id 3 is dtkd's extension)
    root/dtkd_synthetic.json                                     the generator's parameters

Every clip is drawn from its own RNG keyed by (seed, class, clip), so a clip does not change
when other knobs such as the number of clips change. The three splits use different
train/val/test partitions of the same clips, as HMDB51's do.

Two vocabularies share one visual world (objects, backgrounds, nuisances): ``target``, the task
(up to 8 two-object relations), and ``pretrain``, 30 classes composed from the same motion
primitives: the embedded analogue of pretraining on Kinetics before fine-tuning on HMDB51.

CLI: python -m dtkd.data.synthetic --root data/synthetic --num-classes 6 --train 12 --val 4 --test 6
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import numpy as np

from dtkd.data.synthetic_scenes import DIFFICULTY, VOCABULARIES, Nuisance, render_scene
from dtkd.data.video import write_video
from dtkd.fsutil import one_writer, staged_dir

GENERATOR_VERSION = 2  # 2: val split (id 3), vocabularies
META_FILE = "dtkd_synthetic.json"
SPLITS_DIR = "testTrainMulti_7030_splits"
SPLIT_IDS = {"train": 1, "val": 3, "test": 2, "unused": 0}


def class_names(num_classes: int, vocabulary: str = "target") -> list[str]:
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary={vocabulary!r}; expected one of {sorted(VOCABULARIES)}")
    scenes = VOCABULARIES[vocabulary]
    if not 2 <= num_classes <= len(scenes):
        raise ValueError(f"num_classes={num_classes}; the {vocabulary} vocabulary has 2..{len(scenes)} classes")
    return list(scenes)[:num_classes]


def _check_counts(clips_per_class: Mapping[str, int]) -> dict[str, int]:
    unknown = set(clips_per_class) - set(SPLIT_IDS)
    if unknown:
        raise ValueError(f"clips_per_class has unknown keys {sorted(unknown)}; use {list(SPLIT_IDS)}")
    counts = {k: int(clips_per_class.get(k, 0)) for k in SPLIT_IDS}
    if counts["train"] < 1 or counts["test"] < 1 or counts["unused"] < 0:
        raise ValueError(f"clips_per_class={dict(clips_per_class)}: need train >= 1 and test >= 1")
    return counts


def split_assignment(counts: Mapping[str, int], split: int) -> list[int]:
    """Split id (1/3/2/0) of each clip for split k: the clip order is rotated by a third per split."""
    ids = [1] * counts["train"] + [3] * counts.get("val", 0) + [2] * counts["test"] + [0] * counts["unused"]
    shift = (split - 1) * len(ids) // 3
    return ids[-shift:] + ids[:-shift] if shift else ids


def _params(num_classes, counts, frames, size, fps, seed, nuisance, vocabulary) -> dict:
    params = dict(version=GENERATOR_VERSION, num_classes=num_classes, clips_per_class=counts,
                  frames=frames, size=size, fps=fps, seed=seed, nuisance=asdict(nuisance),
                  vocabulary=vocabulary)
    return json.loads(json.dumps(params))  # tuples -> lists, as they read back from the file


# Salts the per-clip RNG key, so that the two vocabularies never draw the same nuisances.
_VOCABULARY_KEY = {"target": (), "pretrain": (1,)}


def _write_tree(tmp: Path, classes: list[str], counts: dict[str, int], frames: int, size: int,
                fps: int, seed: int, nuisance: Nuisance, vocabulary: str) -> None:
    total = sum(counts.values())
    for class_idx, name in enumerate(classes):
        for clip in range(total):
            rng = np.random.default_rng([seed, class_idx, clip, *_VOCABULARY_KEY[vocabulary]])
            video = render_scene(name, frames=frames, size=size, rng=rng, nuisance=nuisance)
            write_video(tmp / name / f"{name}_{clip:04d}.avi", video, fps=fps)
    split_dir = tmp / SPLITS_DIR
    split_dir.mkdir(parents=True)
    for split in (1, 2, 3):
        ids = split_assignment(counts, split)
        for name in classes:
            lines = [f"{name}_{clip:04d}.avi {sid} \n" for clip, sid in enumerate(ids)]
            (split_dir / f"{name}_test_split{split}.txt").write_text("".join(lines))


def generate_synthetic(
    root: str | os.PathLike,
    *,
    num_classes: int = 6,
    clips_per_class: Mapping[str, int] | None = None,
    frames: int = 16,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    difficulty: str = "default",
    vocabulary: str = "target",
    nuisance: Nuisance | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the dataset under `root` and return its absolute path.

    `clips_per_class`: {train, val, test, unused} counts (val and unused default to 0).
    `difficulty` picks a nuisance preset (easy | default | hard); `nuisance` overrides it.
    `vocabulary`: ``target`` (the task's classes) or ``pretrain`` (the composed pretraining set).

    An existing root written with the same parameters is reused as is; one with other
    parameters raises FileExistsError unless `overwrite`. Written to a temporary sibling and
    renamed, so a crash never leaves a half-written dataset at `root`.
    """
    root = Path(root).absolute()
    counts = _check_counts(clips_per_class or {"train": 12, "test": 6})
    classes = class_names(num_classes, vocabulary)
    if frames < 2 or size < 8 or size % 2 or fps < 1:
        raise ValueError(f"need frames >= 2, even size >= 8, fps >= 1; got frames={frames}, "
                         f"size={size}, fps={fps}")
    if nuisance is None:
        if difficulty not in DIFFICULTY:
            raise ValueError(f"difficulty={difficulty!r}; expected one of {sorted(DIFFICULTY)}")
        nuisance = DIFFICULTY[difficulty]
    params = _params(num_classes, counts, frames, size, fps, seed, nuisance, vocabulary)

    with one_writer(root, "the synthetic dataset"):  # two runs generating one root: one writes
        if root.exists() and any(root.iterdir()):
            meta = root / META_FILE
            if meta.is_file() and json.loads(meta.read_text()) == params:
                return root
            if not overwrite:
                raise FileExistsError(f"{root} exists and was not written by generate_synthetic with "
                                      "these parameters; pass overwrite=True to replace it")

        with staged_dir(root, "the synthetic dataset") as tmp:
            _write_tree(tmp, classes, counts, frames, size, fps, seed, nuisance, vocabulary)
            (tmp / META_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtkd.data.synthetic",
                                     description="Write the synthetic action dataset (HMDB51 layout).")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--train", type=int, default=12, help="train clips per class")
    parser.add_argument("--val", type=int, default=0, help="validation clips per class")
    parser.add_argument("--test", type=int, default=6, help="test clips per class")
    parser.add_argument("--unused", type=int, default=0, help="clips per class in no split (an unlabelled pool)")
    parser.add_argument("--vocabulary", choices=sorted(VOCABULARIES), default="target")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTY), default="default")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = generate_synthetic(args.root, num_classes=args.num_classes,
                              clips_per_class={"train": args.train, "val": args.val, "test": args.test,
                                               "unused": args.unused},
                              frames=args.frames, size=args.size, fps=args.fps, seed=args.seed,
                              difficulty=args.difficulty, vocabulary=args.vocabulary,
                              overwrite=args.overwrite)
    n = args.num_classes * (args.train + args.val + args.test + args.unused)
    print(f"{root}: {n} clips, {args.num_classes} classes ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
