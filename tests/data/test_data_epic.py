"""EPIC-KITCHENS-100: the reader on a fixture written in the official layout (frame folders and
per-participant videos), timestamps vs frame columns, and the errors bad files give."""
from __future__ import annotations

import csv
import shutil

import pytest
import torch

from dtkd.data import AnnotationError, DataConfig, VideoDecodeError
from dtkd.data.epic import read_segment, write_epic_fixture
from dtkd.data.formats import (DATASETS, EPIC_FILES, MultiHeadIndex, epic_frame_name, epic_frame_range,
                               epic_timestamp, read_epic_kitchens)

KW = dict(participants=("P01", "P02"), segments_per_video=3, segment_frames=6, gap=2, num_verbs=3, num_nouns=4,
          validation_every=3, size=16)


@pytest.fixture(scope="module")
def epic_root(tmp_path_factory):
    return write_epic_fixture(tmp_path_factory.mktemp("epic"), source="both", **KW)


def _copy(root, tmp_path):
    dst = tmp_path / "epic"
    shutil.copytree(root, dst)
    return dst


def _rewrite(path, edit):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])
    rows, fields = edit(rows, fields)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_registered_and_reader_options_checked_by_config():
    assert DATASETS.get("epic_kitchens100") is read_epic_kitchens
    DataConfig(dataset="epic_kitchens100", reader={"source": "frames", "fps": 60})
    with pytest.raises(ValueError, match="no option"):
        DataConfig(dataset="epic_kitchens100", reader={"frame_dir": "x"})


def test_reads_every_narration_with_both_heads(epic_root):
    index = read_epic_kitchens(epic_root)
    assert isinstance(index, MultiHeadIndex)
    assert index.heads == {"verb": ["verb0", "verb1", "verb2"], "noun": ["noun0", "noun1", "noun2", "noun3"]}
    assert sorted(e.video_id for e in index.entries) == [f"P0{p}_01_{s}" for p in (1, 2) for s in range(3)]
    by_id = {e.video_id: e for e in index.entries}
    # k = 0..5 in write order: verb = k % 3, round r = k // 3, noun = (k % 3 + r) % 4; round 1 -> validation
    assert by_id["P01_01_0"].labels == (("verb", 0), ("noun", 0))
    assert by_id["P02_01_1"].labels == (("verb", 1), ("noun", 2))   # k = 4: verb 1, noun (1 + 1) % 4
    assert by_id["P01_01_2"].labels == (("verb", 2), ("noun", 2)) and by_id["P01_01_2"].split == "train"
    assert {e.split for e in index.entries if e.participant_id == "P02"} == {"test"}
    assert sum(e.split == "train" for e in index.entries) == 3
    # gap 2, then 6-frame segments each followed by 2 gap frames: 3..8, 11..16, 19..24
    assert [(by_id[f"P01_01_{s}"].start_frame, by_id[f"P01_01_{s}"].stop_frame) for s in range(3)] == \
        [(3, 8), (11, 16), (19, 24)]
    assert by_id["P01_01_1"].num_frames == 6
    assert by_id["P01_01_0"].source == "frames"  # auto: the frame folder exists
    assert by_id["P01_01_0"].path == epic_root / "P01" / "rgb_frames" / "P01_01"
    assert by_id["P01_01_0"].label == "verb0" and index.classes == index.heads["verb"]


def test_timestamps_agree_with_frame_columns(epic_root):
    frames = {e.video_id: (e.start_frame, e.stop_frame) for e in read_epic_kitchens(epic_root, segments="frames").entries}
    stamps = {e.video_id: (e.start_frame, e.stop_frame)
              for e in read_epic_kitchens(epic_root, segments="timestamps", fps=50).entries}
    assert frames == stamps
    # at 25 fps the same timestamps cover half as many frames: 00:00:00.04 -> frame 2
    half = {e.video_id: (e.start_frame, e.stop_frame)
            for e in read_epic_kitchens(epic_root, segments="timestamps", fps=25).entries}
    assert half["P01_01_0"] == (2, 4)  # [0.04 s, 0.16 s] at 25 fps


def test_timestamp_arithmetic():
    assert epic_timestamp("01:02:03.50") == pytest.approx(3723.5)
    assert epic_frame_range(0.0, 0.1, 50) == (1, 5)
    assert epic_frame_range(1.0, 1.0, 50) == (51, 51)  # a zero-length segment keeps one frame
    with pytest.raises(ValueError, match="HH:MM:SS"):
        epic_timestamp("12.5")


def test_segments_only_columns_fall_back_to_timestamps(epic_root, tmp_path):
    root = _copy(epic_root, tmp_path)
    for name in EPIC_FILES.values():
        _rewrite(root / "annotations" / name,
                 lambda rows, f: (rows, [c for c in f if c not in ("start_frame", "stop_frame")]))
    got = {e.video_id: (e.start_frame, e.stop_frame) for e in read_epic_kitchens(root).entries}
    assert got["P01_01_1"] == (11, 16)


def test_segment_frames_equal_between_jpeg_folder_and_video(epic_root):
    index = read_epic_kitchens(epic_root, source="frames")
    seg = next(e for e in index.entries if e.video_id == "P02_01_1")
    vseg = next(e for e in read_epic_kitchens(epic_root, source="video").entries if e.video_id == "P02_01_1")
    assert vseg.path == epic_root / "P02" / "videos" / "P02_01.MP4" and vseg.source == "video"
    a = read_segment(seg, [0, 2, 5]).float()
    b = read_segment(vseg, [0, 2, 5]).float()
    assert a.shape == b.shape == (3, 16, 16, 3)
    assert (a - b).abs().mean() < 12  # JPEG vs mpeg4: the same content up to compression
    # the segment's first frame is not the frame before it (a gap frame: no square)
    before = read_segment(seg.__class__(**{**seg.__dict__, "start_frame": seg.start_frame - 1}), [0]).float()
    assert (a[0] - before[0]).abs().max() > 50
    with pytest.raises(ValueError, match="P02_01_1"):
        read_segment(seg, [6])


def test_missing_column_names_file_and_column(epic_root, tmp_path):
    root = _copy(epic_root, tmp_path)
    csv_path = root / "annotations" / EPIC_FILES["train"]
    _rewrite(csv_path, lambda rows, f: (rows, [c for c in f if c != "verb_class"]))
    with pytest.raises(AnnotationError, match="EPIC_100_train.csv.*verb_class"):
        read_epic_kitchens(root)


def test_out_of_range_class_names_line_and_narration(epic_root, tmp_path):
    root = _copy(epic_root, tmp_path)

    def edit(rows, f):
        rows[1]["noun_class"] = "4"
        return rows, f

    _rewrite(root / "annotations" / EPIC_FILES["validation"], edit)
    with pytest.raises(AnnotationError, match=r"line 3, narration 'P02_01_1'.*noun_class 4"):
        read_epic_kitchens(root)


def test_bad_integer_and_reversed_segment(epic_root, tmp_path):
    root = _copy(epic_root, tmp_path)

    def edit(rows, f):
        rows[0]["start_frame"], rows[0]["stop_frame"] = "9", "3"
        return rows, f

    _rewrite(root / "annotations" / EPIC_FILES["train"], edit)
    with pytest.raises(AnnotationError, match="P01_01_0.*9..3"):
        read_epic_kitchens(root)

    def edit2(rows, f):
        rows[0]["start_frame"] = "three"
        return rows, f

    _rewrite(root / "annotations" / EPIC_FILES["train"], edit2)
    with pytest.raises(AnnotationError, match="line 2.*start_frame 'three'"):
        read_epic_kitchens(root)


def test_absent_frames_name_the_narration(epic_root, tmp_path):
    root = _copy(epic_root, tmp_path)
    (root / "P01" / "rgb_frames" / "P01_01" / epic_frame_name(16)).unlink()
    with pytest.raises(FileNotFoundError, match=r"frame_0000000016\.jpg.*P01_01_1"):
        read_epic_kitchens(root)
    shutil.rmtree(root / "P01" / "rgb_frames")  # auto falls back to the video
    assert {e.source for e in read_epic_kitchens(root).entries if e.participant_id == "P01"} == {"video"}
    (root / "P01" / "videos" / "P01_01.MP4").unlink()
    with pytest.raises(FileNotFoundError, match=r"P01_01\.MP4.*P01_01_0"):
        read_epic_kitchens(root)


def test_missing_class_list_and_annotation_file(epic_root, tmp_path):
    root = _copy(epic_root, tmp_path)
    (root / "annotations" / EPIC_FILES["validation"]).unlink()
    with pytest.raises(FileNotFoundError, match="EPIC_100_validation.csv"):
        read_epic_kitchens(root)
    (root / "annotations" / "EPIC_100_noun_classes.csv").unlink()
    with pytest.raises(FileNotFoundError, match="noun class list"):
        read_epic_kitchens(root)


def test_validation_split_option_and_bad_options(epic_root):
    splits = {e.split for e in read_epic_kitchens(epic_root, validation_split="val").entries}
    assert splits == {"train", "val"}
    for kw in ({"source": "jpeg"}, {"segments": "seconds"}, {"fps": 0}, {"validation_split": "dev"}):
        with pytest.raises(ValueError):
            read_epic_kitchens(epic_root, **kw)


def test_jpeg_reader_flags_a_corrupt_frame(epic_root, tmp_path):
    root = _copy(epic_root, tmp_path)
    seg = next(e for e in read_epic_kitchens(root).entries if e.video_id == "P01_01_0")
    (seg.path / epic_frame_name(4)).write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match="frame_0000000004"):
        read_segment(seg, [1])
    assert read_segment(seg, [0]).dtype == torch.uint8


# --- the manifest and ClipDataset on segments ---------------------------------------------------------

def test_manifest_of_segments_with_heads(epic_root):
    from dtkd.data import build_manifest, num_classes_of
    from dtkd.data.manifest import heads_of

    m = build_manifest("epic_kitchens100", epic_root)
    assert len(m) == 6 and (m["split"] == "test").sum() == 3
    layout = heads_of(m)
    assert layout.as_dict() == {"verb": 3, "noun": 4} and num_classes_of(m) == 12
    row = m.set_index("video_id").loc["P02_01_1"]
    assert (row["label_verb"], row["label_noun"], row["label_idx"]) == (1, 2, 1 * 4 + 2)
    assert row["label"] == "verb1/noun2" and row["frames"] == 6 and (row["start_frame"], row["stop_frame"]) == (11, 16)
    assert (row["width"], row["height"], row["fps"]) == (16, 16, 50.0) and row["source"] == "frames"
    # content identity: the segment's frame files; another segment of the same folder differs
    assert row["sha256"] != m.set_index("video_id").loc["P02_01_0", "sha256"]
    v = build_manifest("epic_kitchens100", epic_root, source="video").set_index("video_id")
    assert v.loc["P02_01_1", "source"] == "video" and v.loc["P02_01_1", "frames"] == 6
    assert v.loc["P02_01_1", "sha256"] == v.loc["P02_01_0", "sha256"]  # one video file


def test_manifest_flags_a_segment_past_the_end_of_its_video(epic_root, tmp_path):
    from dtkd.data import build_manifest

    root = _copy(epic_root, tmp_path)
    shutil.rmtree(root / "P01" / "rgb_frames")

    def edit(rows, f):
        rows[-1]["stop_frame"] = "400"
        return rows, f

    _rewrite(root / "annotations" / EPIC_FILES["train"], edit)
    m = build_manifest("epic_kitchens100", root, on_error="flag").set_index("video_id")
    assert not m.loc["P01_01_2", "ok"] and "ends at frame 400" in m.loc["P01_01_2", "error"]
    assert m["ok"].sum() == 5
    with pytest.raises(VideoDecodeError, match="P01_01_2"):
        build_manifest("epic_kitchens100", root)


@pytest.mark.parametrize("source", ["frames", "video"])
def test_clip_dataset_reads_the_segment_not_the_whole_video(epic_root, source):
    from dtkd.data import ClipDataset, ViewSpec, build_manifest

    m = build_manifest("epic_kitchens100", epic_root, source=source)
    view = ViewSpec(frames=6, sampling_rate=1, crop_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    ds = ClipDataset(m, "test", {"student": view}, train=False)
    i = ds._ids.index("P02_01_2")
    item = ds[i]
    assert item["label"] == m.set_index("video_id").loc["P02_01_2", "label_idx"]
    seg = next(e for e in read_epic_kitchens(epic_root, source=source).entries if e.video_id == "P02_01_2")
    want = read_segment(seg, range(6)).permute(3, 0, 1, 2).float() / 255  # (C, T, H, W), no crop needed at 16 px
    assert item["inputs"]["student"].shape == (1, 3, 6, 16, 16)
    assert torch.allclose(item["inputs"]["student"][0], want, atol=1e-5)


def test_clip_store_refuses_segments(epic_root, tmp_path):
    from dtkd.data import build_manifest, build_store

    with pytest.raises(ValueError, match="segments.*store.enabled: false"):
        build_store(build_manifest("epic_kitchens100", epic_root), tmp_path / "store")


def test_fixture_cli_writes_a_readable_dataset(tmp_path):
    from dtkd.data.epic import main

    assert main([str(tmp_path / "e"), "--participants", "1", "--segments-per-video", "2", "--size", "16"]) == 0
    index = read_epic_kitchens(tmp_path / "e")
    assert len(index.entries) == 2 and {e.participant_id for e in index.entries} == {"P01"}
