"""Each dataset format, written in its real file layout and naming with tiny generated videos,
round-trips to the manifest; bad files and bad annotations give errors that name them."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from dtkd.data import AnnotationError, MANIFEST_COLUMNS, VideoDecodeError, build_manifest, write_video
from dtkd.data.formats import DATASETS

from data_helpers import tiny_clip

FRAMES = 8


def _video(path, seed):
    write_video(path, tiny_clip(seed, frames=FRAMES), fps=8)


# --- fixtures in the official layouts ----------------------------------------------------------

HMDB = {  # class -> [(video, id in split 1, id in split 2)]
    "brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1, 2),
                   ("Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi", 2, 1),
                   ("Aussie_Brush_Your_Hair_brush_hair_h_cm_np1_le_med_1.avi", 0, 1)],
    "cartwheel": [("Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi", 1, 1),
                  ("Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi", 2, 2)],
}


@pytest.fixture(scope="module")
def hmdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hmdb51")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    seed = 0
    for label, videos in HMDB.items():
        for name, _, _ in videos:
            _video(root / label / name, seed := seed + 1)
        for k in (1, 2, 3):
            col = 1 if k in (1, 3) else 2
            # The official files end every line with a space.
            (splits / f"{label}_test_split{k}.txt").write_text("".join(f"{v[0]} {v[col]} \n" for v in videos))
    return root


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf101")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    classes = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    # UCF101's lists use CRLF line endings; its HandstandPushups files are spelled "HandStand".
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "HandstandPushups/v_HandStandPushups_g08_c02.avi 2",
             "YoYo/v_YoYo_g09_c03.avi 3"]
    test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "YoYo/v_YoYo_g01_c04.avi"]
    for k in (1, 2, 3):
        (lists / f"trainlist0{k}.txt").write_text("".join(line + "\r\n" for line in train))
        (lists / f"testlist0{k}.txt").write_text("".join(line + "\r\n" for line in test))
    for seed, line in enumerate(train + test):
        _video(root / "UCF-101" / line.split()[0], seed)
    return root


KINETICS_TRAIN = [("abseiling", "--07WQ2iBlw", 1, 11), ("playing guitar", "-0_6_kg-tdc", 30, 40),
                  ("abseiling", "0wR5jVB-WPk", 417, 427)]
KINETICS_VAL = [("playing guitar", "zzz_AbC-1x", 5, 15)]


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics")
    (root / "annotations").mkdir()
    header = "label,youtube_id,time_start,time_end,split\n"
    for split, rows in (("train", KINETICS_TRAIN), ("val", KINETICS_VAL)):
        lines = [f"{label},{yid},{s},{e},{split}\n" for label, yid, s, e in rows]
        (root / "annotations" / f"{split}.csv").write_text(header + "".join(lines))
        for seed, (label, yid, s, e) in enumerate(rows):
            _video(root / split / label / f"{yid}_{s:06d}_{e:06d}.mp4", seed)
    # The held-out test CSV has no labels: those rows cannot enter a labelled manifest.
    (root / "annotations" / "test.csv").write_text(header + ",aaaaaaaaaaa,0,10,test\n")
    return root


SSV2_LABELS = {"Holding something next to something": "0", "Pushing something from left to right": "1",
               "Putting something on a surface": "2"}
SSV2_TRAIN = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
               "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
              {"id": "42326", "label": "pushing a pen from left to right",
               "template": "Pushing [something] from left to right", "placeholders": ["a pen"]}]
SSV2_VAL = [{"id": "1420", "label": "putting a cup on a surface",
             "template": "Putting [something] on a surface", "placeholders": ["a cup"]}]


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    labels = root / "labels"
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps(SSV2_LABELS, indent=1))
    (labels / "train.json").write_text(json.dumps(SSV2_TRAIN))
    (labels / "validation.json").write_text(json.dumps(SSV2_VAL))
    for seed, item in enumerate(SSV2_TRAIN + SSV2_VAL):
        _video(root / "20bn-something-something-v2" / f"{item['id']}.webm", seed)
    return root


# --- round trips -----------------------------------------------------------------------------------

def _check_common(m):
    assert list(m.columns) == MANIFEST_COLUMNS
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in m["path"])
    assert set(m["frames"]) == {FRAMES} and set(m["fps"]) == {8.0}
    assert set(m["width"]) == {32} and set(m["height"]) == {32}
    order = m["split"].map({"train": 0, "val": 1, "test": 2})
    assert order.is_monotonic_increasing


def test_hmdb51_round_trip(hmdb_root):
    m = build_manifest("hmdb51", hmdb_root, split=1)
    _check_common(m)
    assert m[["video_id", "label", "label_idx", "split"]].values.tolist() == [
        ["April_09_brush_hair_u_nm_np1_ba_goo_0", "brush_hair", 0, "train"],
        ["Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8", "cartwheel", 1, "train"],
        ["Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0", "brush_hair", 0, "test"],
        ["Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0", "cartwheel", 1, "test"],
    ]  # the id-0 video is left out
    assert m.loc[0, "path"] == str(hmdb_root / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi")
    m2 = build_manifest("hmdb51", hmdb_root, split=2)
    assert m2.groupby("split").size().to_dict() == {"train": 3, "test": 2}


def test_ucf101_round_trip(ucf_root):
    m = build_manifest("ucf101", ucf_root, split=2)
    _check_common(m)
    assert m[["video_id", "label", "label_idx", "split"]].values.tolist() == [
        ["v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup", 0, "train"],
        ["v_HandStandPushups_g08_c02", "HandstandPushups", 1, "train"],
        ["v_YoYo_g09_c03", "YoYo", 2, "train"],
        ["v_ApplyEyeMakeup_g01_c01", "ApplyEyeMakeup", 0, "test"],
        ["v_YoYo_g01_c04", "YoYo", 2, "test"],
    ]
    assert m.loc[1, "path"].endswith("UCF-101/HandstandPushups/v_HandStandPushups_g08_c02.avi")


def test_kinetics_round_trip(kinetics_root):
    with pytest.warns(UserWarning, match="skipped 1 rows without a label"):
        m = build_manifest("kinetics", kinetics_root)
    _check_common(m)
    assert m[["video_id", "label", "label_idx", "split"]].values.tolist() == [
        ["--07WQ2iBlw_000001_000011", "abseiling", 0, "train"],
        ["0wR5jVB-WPk_000417_000427", "abseiling", 0, "train"],
        ["-0_6_kg-tdc_000030_000040", "playing guitar", 1, "train"],
        ["zzz_AbC-1x_000005_000015", "playing guitar", 1, "val"],
    ]
    assert m.loc[3, "path"] == str(kinetics_root / "val" / "playing guitar" / "zzz_AbC-1x_000005_000015.mp4")


def test_kinetics_label_folders_with_underscores(kinetics_root, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(kinetics_root, root)
    (root / "train" / "playing guitar").rename(root / "train" / "playing_guitar")
    m = build_manifest("kinetics", root, csv_files=["annotations/train.csv"])
    assert m.loc[m["label"] == "playing guitar", "path"].item().endswith("train/playing_guitar/-0_6_kg-tdc_000030_000040.mp4")


def test_ssv2_round_trip(ssv2_root):
    m = build_manifest("ssv2", ssv2_root)
    _check_common(m)
    # label = template without brackets; label_idx = position among ALL sorted labels.json names
    assert m[["video_id", "label", "label_idx", "split"]].values.tolist() == [
        ["78687", "Holding something next to something", 0, "train"],
        ["42326", "Pushing something from left to right", 1, "train"],
        ["1420", "Putting something on a surface", 2, "val"],
    ]
    assert m.loc[2, "path"] == str(ssv2_root / "20bn-something-something-v2" / "1420.webm")


def test_synthetic_is_read_like_hmdb51(synthetic_root):
    a = build_manifest("synthetic", synthetic_root, split=3)
    b = build_manifest("hmdb51", synthetic_root, split=3)
    assert a.equals(b)


def test_dataset_registry_names():
    assert DATASETS.names() == ["epic_kitchens100", "hmdb51", "kinetics", "ssv2", "synthetic", "ucf101"]
    with pytest.raises(KeyError, match="unknown dataset 'hmdb'; known: epic_kitchens100, hmdb51, kinetics"):
        build_manifest("hmdb", "/nowhere")


# --- bad files ---------------------------------------------------------------------------------------

@pytest.fixture
def broken_hmdb(hmdb_root, tmp_path):
    """A copy where one listed video is missing and another is garbage."""
    root = tmp_path / "hmdb"
    shutil.copytree(hmdb_root, root)
    missing = root / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"
    missing.unlink()
    corrupt = root / "cartwheel" / "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi"
    corrupt.write_bytes(b"not a video at all" * 10)
    return root, missing, corrupt


def test_missing_video_raises_naming_the_file(broken_hmdb):
    root, missing, _ = broken_hmdb
    with pytest.raises(VideoDecodeError) as err:
        build_manifest("hmdb51", root)
    assert err.value.path == str(missing) and err.value.reason == "file not found"


def test_corrupt_video_raises_naming_the_file(broken_hmdb):
    root, missing, corrupt = broken_hmdb
    _video(missing, 99)  # restore it: now the corrupt file is the first problem
    with pytest.raises(VideoDecodeError, match="Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi: cannot open"):
        build_manifest("hmdb51", root)


def test_flag_mode_keeps_bad_rows_for_the_quality_gate(broken_hmdb):
    root, missing, corrupt = broken_hmdb
    m = build_manifest("hmdb51", root, on_error="flag")
    assert list(m.columns) == MANIFEST_COLUMNS + ["ok", "error"]
    bad = m[~m["ok"]].set_index("path")
    assert sorted(bad.index) == sorted([str(missing), str(corrupt)])
    assert bad.loc[str(missing), "error"] == "file not found"
    assert (bad["frames"] == 0).all()
    assert m["ok"].sum() == 2 and (m.loc[m["ok"], "error"] == "").all()


def test_skip_mode_drops_bad_rows_with_a_warning(broken_hmdb):
    root, _, _ = broken_hmdb
    with pytest.warns(UserWarning, match="skipped 2 unreadable videos"):
        m = build_manifest("hmdb51", root, on_error="skip")
    assert list(m.columns) == MANIFEST_COLUMNS and len(m) == 2


# --- bad annotations ---------------------------------------------------------------------------------

def test_malformed_hmdb_line_names_file_and_line(hmdb_root, tmp_path):
    root = tmp_path / "h"
    shutil.copytree(hmdb_root, root)
    f = root / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt"
    f.write_text(f.read_text() + "extra.avi 7\n")
    with pytest.raises(AnnotationError, match=r"cartwheel_test_split1.txt \(line 3\): expected"):
        build_manifest("hmdb51", root)


def test_split_file_that_is_not_utf8_names_file_line_and_byte(hmdb_root, tmp_path):
    root = tmp_path / "h"
    shutil.copytree(hmdb_root, root)
    f = root / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt"
    f.write_bytes(f.read_bytes() + b"caf\xff.avi 1\n")
    with pytest.raises(AnnotationError, match=r"cartwheel_test_split1.txt \(line 3\): not UTF-8 text \(byte 0xff"):
        build_manifest("hmdb51", root)


def test_unknown_codec_is_flagged_naming_the_file(broken_hmdb):
    """An AVI whose FourCC FFmpeg has no decoder for: flagged with its reason, the run goes on."""
    root, missing, corrupt = broken_hmdb
    _video(missing, 99)
    _video(corrupt, 7)
    data = corrupt.read_bytes()
    assert data.count(b"FMP4") == 2  # the stream header's handler and the format's compression
    corrupt.write_bytes(data.replace(b"FMP4", b"ZQZQ"))
    m = build_manifest("hmdb51", root, on_error="flag").set_index("path")
    assert not m.loc[str(corrupt), "ok"] and "no decoder for its video codec" in m.loc[str(corrupt), "error"]
    assert m["ok"].sum() == 3
    with pytest.raises(VideoDecodeError, match="Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi: no decoder"):
        build_manifest("hmdb51", root)


def test_ucf_list_with_unknown_class_names_file_and_line(ucf_root, tmp_path):
    root = tmp_path / "u"
    shutil.copytree(ucf_root, root)
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("Skiing/v_Skiing_g01_c01.avi\r\n")
    with pytest.raises(AnnotationError, match=r"testlist01.txt \(line 1\).*Skiing"):
        build_manifest("ucf101", root)


def test_ssv2_unknown_template_names_file_and_entry(ssv2_root, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(ssv2_root, root)
    items = SSV2_VAL + [{"id": "7", "label": "x", "template": "Juggling [something]", "placeholders": []}]
    (root / "labels" / "validation.json").write_text(json.dumps(items))
    with pytest.raises(AnnotationError, match=r"validation.json \(entry 1 \(id 7\)\).*Juggling"):
        build_manifest("ssv2", root)


def test_kinetics_csv_without_required_columns(kinetics_root, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,youtube_id,split\nabseiling,x,train\n")
    with pytest.raises(AnnotationError, match=r"bad.csv \(header\): missing columns \['time_end', 'time_start'\]"):
        build_manifest("kinetics", kinetics_root, csv_files=[str(bad)])


@pytest.mark.parametrize("dataset, split", [("hmdb51", 4), ("ucf101", 0), ("kinetics", 2), ("ssv2", 3)])
def test_folds_that_do_not_exist_are_refused(dataset, split, tmp_path):
    with pytest.raises(ValueError, match=f"{dataset}: split={split}"):
        build_manifest(dataset, tmp_path, split=split)


def test_missing_annotation_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="testTrainMulti_7030_splits"):
        build_manifest("hmdb51", tmp_path)
    with pytest.raises(FileNotFoundError, match="classInd.txt"):
        build_manifest("ucf101", tmp_path)
    with pytest.raises(FileNotFoundError, match="labels.json"):
        build_manifest("ssv2", tmp_path)
