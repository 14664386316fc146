"""The unlabelled transfer set: which videos it holds, how they enter the manifest and training."""
from __future__ import annotations

import shutil

import pytest
import torch

from dtkd.data import ClipDataset, DataConfig, class_names, num_classes_of, prepare_manifest
from dtkd.data.unlabelled import unlabelled_entries
from dtkd.data.views import ViewSpec

SYNTHETIC = {"num_classes": 2, "clips_per_class": {"train": 2, "val": 1, "test": 1, "unused": 3}, "frames": 8,
             "size": 32}


def test_the_synthetic_pool_is_the_unused_clips_without_their_labels(tmp_path):
    m = prepare_manifest(DataConfig(root=tmp_path / "s", synthetic=SYNTHETIC, unlabelled="synthetic"))
    pool = m[m["split"] == "unlabelled"]
    assert len(pool) == 6 and set(pool["label"]) == {""} and set(pool["label_idx"]) == {-1}
    assert m["split"].tolist()[-6:] == ["unlabelled"] * 6  # after train, val and test
    labelled = m[m["split"] != "unlabelled"]
    assert not set(pool["video_id"]) & set(labelled["video_id"])
    # The labelled data is what it was without the pool.
    alone = prepare_manifest(DataConfig(root=tmp_path / "s", synthetic=SYNTHETIC))
    assert labelled.reset_index(drop=True).equals(alone)
    assert class_names(m) == ["approach", "separate"] and num_classes_of(m) == 2


def test_a_folder_in_any_layout_gives_every_video_below_it(tmp_path, synthetic_root):
    raw = tmp_path / "raw"
    (raw / "day1" / "cam").mkdir(parents=True)
    shutil.copy(synthetic_root / "approach" / "approach_0000.avi", raw / "day1" / "cam" / "a.avi")
    shutil.copy(synthetic_root / "separate" / "separate_0001.avi", raw / "b.AVI")
    (raw / "notes.txt").write_text("not a video")
    entries = unlabelled_entries(raw)
    assert [e.video_id for e in entries] == ["unlabelled/b.AVI", "unlabelled/day1/cam/a.avi"]
    assert {e.split for e in entries} == {"unlabelled"} and {e.label for e in entries} == {""}
    m = prepare_manifest(DataConfig(root=tmp_path / "s", synthetic=SYNTHETIC, unlabelled=str(raw)))
    assert m.loc[m["split"] == "unlabelled", "frames"].tolist() == [16, 16]  # probed like every video


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "folder not found"),
    (lambda p: (p.mkdir(), (p / "x.txt").write_text("x")), "holds no video files"),
])
def test_a_folder_without_videos_is_refused_by_name(tmp_path, make, message):
    make(tmp_path / "raw")
    with pytest.raises((FileNotFoundError, ValueError), match=f"data.unlabelled: .*raw.*{message}"):
        unlabelled_entries(tmp_path / "raw")


def test_the_synthetic_pool_needs_unused_clips(tmp_path):
    with pytest.raises(ValueError, match="no unused clips.*clips_per_class.unused"):
        prepare_manifest(DataConfig(root=tmp_path / "s", synthetic={**SYNTHETIC, "clips_per_class": {"train": 2, "test": 1}},
                                    unlabelled="synthetic"))


def test_a_dataset_reads_several_splits_and_keeps_label_minus_one(tmp_path):
    m = prepare_manifest(DataConfig(root=tmp_path / "s", synthetic=SYNTHETIC, unlabelled="synthetic"))
    view = {"student": ViewSpec(frames=4, sampling_rate=2, crop_size=32)}
    both = ClipDataset(m, ("train", "unlabelled"), view, train=True)
    assert len(both) == 4 + 6 and both.split == "train+unlabelled"
    labels = [both[i]["label"] for i in range(len(both))]
    assert labels.count(-1) == 6 and sorted(set(labels)) == [-1, 0, 1]
    assert ClipDataset(m, "train", view, train=True).content_key() != both.content_key()
    with pytest.raises(ValueError, match="expected one or more of"):
        ClipDataset(m, ("train", "holdout"), view, train=True)
    assert isinstance(both[0]["inputs"]["student"], torch.Tensor)
