"""Content-addressed identity (issue 13, item 1): a manifest names its files' bytes, so new
contents under old names are new data, and the same files elsewhere are the same data."""
from __future__ import annotations

import shutil

from dtkd.data import build_manifest, manifest_fingerprint, probe_video, read_frames, write_video
from dtkd.fsutil import file_sha256


def test_every_row_carries_its_file_size_and_sha256(synthetic_manifest):
    for _, row in synthetic_manifest.head(3).iterrows():
        assert row["sha256"] == file_sha256(row["path"]) and len(row["sha256"]) == 64
        assert row["size_bytes"] > 0


def test_new_bytes_under_an_old_name_change_the_fingerprint(synthetic_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    old = build_manifest("synthetic", root)
    video = old["path"].iloc[0]
    info = probe_video(video)
    frames = read_frames(video, range(info["frames"])).numpy()
    write_video(video, frames[:, :, ::-1].copy(), fps=round(info["fps"]))  # mirrored: same name, id, label
    new = build_manifest("synthetic", root)
    assert list(new["video_id"]) == list(old["video_id"]) and list(new["label"]) == list(old["label"])
    assert manifest_fingerprint(new) != manifest_fingerprint(old)
    assert manifest_fingerprint(new, "test") == manifest_fingerprint(old, "test")  # only a train clip changed
    assert new["sha256"].iloc[0] != old["sha256"].iloc[0] and (new["sha256"].iloc[1:] == old["sha256"].iloc[1:]).all()


def test_the_same_files_moved_elsewhere_keep_their_fingerprint(synthetic_root, synthetic_manifest, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(synthetic_root, moved)
    again = build_manifest("synthetic", moved)
    assert (again["path"] != synthetic_manifest["path"]).all()
    assert manifest_fingerprint(again) == manifest_fingerprint(synthetic_manifest)


def test_a_hand_built_manifest_without_hashes_is_named_by_its_rows(synthetic_manifest):
    rows_only = synthetic_manifest.drop(columns=["size_bytes", "sha256"])
    assert manifest_fingerprint(rows_only) == manifest_fingerprint(rows_only.copy())
    assert manifest_fingerprint(rows_only) != manifest_fingerprint(synthetic_manifest)
