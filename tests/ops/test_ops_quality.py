"""The Great Expectations data quality gate on real (tiny) videos: clean, corrupted, leaking."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ops_helpers import CLASSES, write_video
from dtkd_ops.quality import DataQualityError, QualityRules, load_quality_rules, run_quality_gate


def _check(report, name):
    return next(r for r in report.results if r.check == name)


def test_clean_dataset_passes_and_builds_data_docs(dataset, quality_rules, tmp_path):
    _, manifest = dataset
    report = run_quality_gate(manifest, quality_rules, docs_dir=tmp_path / "docs")
    assert report.success, report.summary()
    assert report.quarantined.empty
    assert len(report.clean_manifest) == len(manifest) == 18
    assert report.docs_path == (tmp_path / "docs" / "index.html").resolve()
    assert report.docs_path.is_file()
    assert list((tmp_path / "docs" / "validations").rglob("*.html")), "no validation pages in Data Docs"
    assert report.summary().startswith("Data quality gate: PASSED")
    assert report.raise_for_failure() is report
    assert set(report.stats.columns) >= {"decodable", "frames", "fps", "width", "height", "duration_s", "sha256"}
    assert (report.stats["frames"] == 16).all() and (report.stats["fps"] == 8.0).all()


def test_corrupted_videos_are_quarantined_and_fail_over_the_fraction(dataset, quality_rules):
    _, manifest = dataset
    truncated, garbage = Path(manifest.path[0]), Path(manifest.path[1])
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"this is not a video\n" * 64)

    report = run_quality_gate(manifest, quality_rules)  # 2/18 = 11% > 10%
    assert not report.success
    reasons = dict(zip(report.quarantined.path, report.quarantined.reason))
    assert set(reasons) == {str(truncated), str(garbage)}
    assert reasons[str(garbage)].startswith("undecodable (")
    assert "truncated or damaged: decoded" in reasons[str(truncated)]
    assert truncated.exists() and garbage.exists(), "quarantine must never delete a file"
    assert len(report.clean_manifest) == 16
    assert not set(report.clean_manifest.path) & set(reasons)
    assert not _check(report, "decodable").success and not _check(report, "complete").success
    assert not report.failed_checks, "only the quarantine fraction should fail here"

    with pytest.raises(DataQualityError) as exc:
        report.raise_for_failure()
    msg = str(exc.value)
    assert msg.startswith("Data quality gate: FAILED") and "EXCEEDED" in msg
    assert str(garbage) in msg and str(truncated) in msg


def test_one_bad_video_under_the_fraction_passes_with_quarantine(dataset, quality_rules):
    _, manifest = dataset
    bad = Path(manifest.path[3])
    bad.write_bytes(b"\x00" * 100)
    report = run_quality_gate(manifest, quality_rules)  # 1/18 = 5.6% <= 10%
    assert report.success, report.summary()
    assert report.quarantined.path.tolist() == [str(bad)]
    assert report.quarantine_fraction == pytest.approx(1 / 18)
    assert str(bad) not in set(report.clean_manifest.path)
    assert list(report.clean_manifest.columns) == list(manifest.columns)


def test_video_id_in_two_splits_is_leakage(dataset, quality_rules):
    _, manifest = dataset
    leaked = manifest.iloc[0].copy()
    leaked["split"] = "test"
    manifest = pd.concat([manifest, leaked.to_frame().T], ignore_index=True)
    report = run_quality_gate(manifest, quality_rules.model_copy(update={"max_quarantine_fraction": 0.5}))
    assert not report.success
    leak = _check(report, "id_leakage")
    assert not leak.success and leak.failing == 1
    assert f"{leaked['video_id']} in ['test', 'train']" in leak.detail
    assert not _check(report, "content_leakage").success
    assert "id_leakage" in report.summary() and "FAIL" in report.summary()


def test_same_content_in_two_splits_is_leakage_and_a_duplicate(dataset, quality_rules):
    root, manifest = dataset
    src = Path(manifest.path[0])  # a train video of the first class
    copy = root / CLASSES[0] / "renamed_copy.avi"
    shutil.copy(src, copy)
    row = {**manifest.iloc[0].to_dict(), "video_id": "renamed_copy", "path": str(copy), "split": "test"}
    manifest = pd.concat([manifest, pd.DataFrame([row])], ignore_index=True)
    report = run_quality_gate(manifest, quality_rules)
    assert not report.success
    assert not _check(report, "content_leakage").success
    assert "renamed_copy.avi" in _check(report, "content_leakage").detail
    assert _check(report, "id_leakage").success
    assert report.quarantined.path.tolist() == [str(copy)]
    assert report.quarantined.reason[0] == f"duplicate content of {src}"


def test_resolution_fps_and_frame_count_rules(dataset, quality_rules, tmp_path):
    _, manifest = dataset
    small = write_video(tmp_path / "small.avi", size=16, seed=101)
    slow = write_video(tmp_path / "slow.avi", fps=2, seed=102)
    short = write_video(tmp_path / "short.avi", frames=4, seed=103)
    extra = [{**manifest.iloc[i].to_dict(), "video_id": p.stem, "path": str(p)}
             for i, p in zip((0, 6, 12), (small, slow, short))]
    manifest = pd.concat([manifest, pd.DataFrame(extra)], ignore_index=True)
    report = run_quality_gate(manifest, quality_rules.model_copy(update={"max_quarantine_fraction": 0.2}))
    reasons = dict(zip(report.quarantined.path, report.quarantined.reason))
    assert reasons[str(small)] == "width 16 < 32; height 16 < 32"
    assert reasons[str(slow)] == "fps 2 outside [4, 60]"  # 16 frames at 2 fps = 8 s: duration ok
    assert reasons[str(short)] == "4 frames < clip length 8; duration 0.50 s < 1 s"
    assert report.success, report.summary()


def test_label_set_and_class_balance(dataset, quality_rules):
    _, manifest = dataset
    rules = quality_rules.model_copy(update={"expected_labels": CLASSES + ["run"]})
    report = run_quality_gate(manifest, rules)
    assert not report.success
    assert _check(report, "label_set").detail.startswith("missing ['run']; to change it set data.quality.expected_labels")
    assert not _check(report, "videos_per_class").success  # 'run' has no videos in either split

    # 4 vs 1 train videos per class > 2.0 allowed
    keep = ~((manifest.label == CLASSES[1]) & (manifest.split == "train") & (manifest.video_id.str[-1] != "0"))
    report = run_quality_gate(manifest[keep], quality_rules)
    balance = _check(report, "class_balance")
    assert not report.success and not balance.success
    assert "train/" in balance.detail


def test_unknown_split_and_missing_required_split(dataset, quality_rules):
    _, manifest = dataset
    manifest = manifest.copy()
    manifest.loc[manifest.split == "test", "split"] = "holdout"
    report = run_quality_gate(manifest, quality_rules)
    assert not report.success
    assert _check(report, "split_names").detail == "unknown split names ['holdout']"
    assert _check(report, "required_splits").detail == "missing ['test']"


def test_expected_num_classes_when_names_are_unknown(dataset):
    _, manifest = dataset
    ok = run_quality_gate(manifest, QualityRules(expected_num_classes=3, min_frames=8))
    bad = run_quality_gate(manifest, QualityRules(expected_num_classes=6, min_frames=8))
    assert ok.success and not bad.success
    assert _check(bad, "label_set").detail.startswith("observed 3; to change it set data.quality.expected_labels")
    assert "exactly 6 labels" in bad.summary()  # what it expected, what it found, which key changes it


def test_report_write_is_complete(dataset, quality_rules, tmp_path):
    _, manifest = dataset
    Path(manifest.path[5]).write_bytes(b"garbage")
    report = run_quality_gate(manifest, quality_rules)
    out = report.write(tmp_path / "report")
    data = json.loads((out / "report.json").read_text())
    assert data["n_quarantined"] == 1 and data["success"] is True
    assert data["checks"]["decodable"]["success"] is False
    assert pd.read_csv(out / "quarantine.csv").path.tolist() == [manifest.path[5]]
    assert len(pd.read_parquet(out / "clean_manifest.parquet")) == 17
    assert (out / "summary.txt").read_text().startswith("Data quality gate: PASSED")


def test_rules_and_manifest_errors_name_the_key(tmp_path, quality_rules):
    cfg = tmp_path / "data.yaml"
    cfg.write_text("quality:\n  min_fpz: 3\n  max_fps: -1\n")
    with pytest.raises(ValueError) as exc:
        load_quality_rules(cfg)
    assert str(cfg) in str(exc.value)
    assert "quality.min_fpz" in str(exc.value) and "quality.max_fps" in str(exc.value)
    with pytest.raises(ValueError, match="section 'quality' is missing"):
        cfg.write_text("synthetic: {}\n")
        load_quality_rules(cfg)
    with pytest.raises(ValueError, match="min_fps .* greater than max_fps"):
        QualityRules(min_fps=30, max_fps=10)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['split'\]"):
        run_quality_gate(pd.DataFrame({"video_id": [], "path": [], "label": []}), quality_rules)


def test_rules_come_from_the_run_configs_data_section_never_from_the_dataset_name():
    from dtkd.data import DataConfig
    from dtkd_ops.quality import rules_for

    # a real dataset with its own class count: nothing implied by the name 'hmdb51'
    real = DataConfig(dataset="hmdb51", root="x", quality={"min_width": 64})
    rules = rules_for(real, min_frames=16)
    assert (rules.expected_labels, rules.expected_num_classes, rules.min_frames, rules.min_width) == (None, None, 16, 64)
    assert rules_for(DataConfig(dataset="ucf101", root="x", quality={"expected_num_classes": 6})).expected_num_classes == 6
    # the synthetic set: its generator's class names; a configured min_frames wins over the models'
    synth = rules_for(DataConfig(quality={"min_frames": 4}), min_frames=16)
    assert len(synth.expected_labels) == 6 and synth.min_frames == 4


def test_unlabelled_transfer_videos_pass_the_video_checks_and_skip_the_label_checks(dataset, quality_rules, tmp_path):
    root, manifest = dataset
    extra = []
    for k in range(3):
        path = write_video(tmp_path / "raw" / f"cam{k}.avi", frames=16, size=64, fps=8, seed=100 + k)
        extra.append({"video_id": f"unlabelled/cam{k}.avi", "path": str(path), "label": "", "label_idx": -1,
                      "split": "unlabelled", "frames": 16, "fps": 8.0, "width": 64, "height": 64})
    tiny = write_video(tmp_path / "raw" / "tiny.avi", frames=16, size=16, fps=8, seed=200)
    extra.append({**extra[0], "video_id": "unlabelled/tiny.avi", "path": str(tiny), "width": 16, "height": 16})
    # A copy of a test video in the transfer set would leak test content into training.
    test_row = manifest[manifest["split"] == "test"].iloc[0]
    shutil.copy(test_row["path"], tmp_path / "raw" / "copy.avi")
    extra.append({**extra[0], "video_id": "unlabelled/copy.avi", "path": str(tmp_path / "raw" / "copy.avi")})
    rules = quality_rules.model_copy(update={"max_quarantine_fraction": 0.5})
    report = run_quality_gate(pd.concat([manifest, pd.DataFrame(extra)], ignore_index=True), rules)
    checks = {r.check: r for r in report.results}
    # The label set and class balance see the labelled videos only.
    assert checks["label_set"].success and checks["class_balance"].success
    quarantined = dict(zip(report.quarantined["video_id"], report.quarantined["reason"]))
    assert "width 16 < 32" in quarantined["unlabelled/tiny.avi"]
    assert not checks["content_leakage"].success  # the copied test video is reported as leakage
    clean = report.clean_manifest
    assert {"unlabelled/cam0.avi", "unlabelled/cam1.avi", "unlabelled/cam2.avi"} <= set(clean["video_id"])


def _vfr_mkv(path: Path, gaps_ms: list[int], header_fps: int = 25) -> float:
    """An MKV whose frames are ``gaps_ms`` apart (variable frame rate) while its header says
    ``header_fps``; returns the true span in seconds from the first to the last frame."""
    import fractions

    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=header_fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.time_base = fractions.Fraction(1, 1000)
        t = 0
        for i in range(len(gaps_ms) + 1):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
            if i < len(gaps_ms):
                t += gaps_ms[i]
        for packet in stream.encode():
            out.mux(packet)
    return sum(gaps_ms) / 1000


def test_a_variable_frame_rate_video_gets_its_rate_and_duration_from_timestamps(dataset, quality_rules, tmp_path):
    _, manifest = dataset
    vfr = Path(manifest.path[0]).with_suffix(".mkv")
    span = _vfr_mkv(vfr, [100, 300, 150, 200] * 4)  # 17 frames over 3.0 s: 5.33 fps; the header says 25
    manifest = manifest.copy()
    manifest.loc[0, "path"] = str(vfr)
    rules = quality_rules.model_copy(update={"min_duration_s": 2.5})
    report = run_quality_gate(manifest, rules)
    row = report.stats.iloc[0]
    assert row["fps"] == pytest.approx(16 / span)
    assert row["duration_s"] == pytest.approx(span + span / 16)  # the span plus one mean frame interval
    assert str(vfr) not in set(report.quarantined.path)  # 3.2 s: long enough (frames / 25 fps: 0.68 s)


def test_damage_inside_a_file_is_quarantined_as_such(dataset, quality_rules):
    """Garbage in the middle of an AVI: most frames still decode (FFmpeg conceals the rest), so a
    fixed tail tolerance let it through; the check scales with the declared length."""
    import numpy as np

    _, manifest = dataset
    damaged = Path(manifest.path[0])
    data = bytearray(damaged.read_bytes())
    n = len(data)
    data[n // 3: n // 3 + n // 6] = np.random.default_rng(2).integers(0, 255, n // 6, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    report = run_quality_gate(manifest, quality_rules)
    reasons = dict(zip(report.quarantined.path, report.quarantined.reason))
    assert list(reasons) == [str(damaged)], reasons
    damage = ("truncated or damaged: decoded", "packet(s) failed to decode", "frame timestamps go backwards")
    assert any(d in reasons[str(damaged)] for d in damage), reasons
    stats = report.stats.iloc[0]
    assert 0 < stats["frames"] < 16 or stats["decode_errors"] > 0 or stats["timestamps_monotonic"] is False


def test_videos_and_class_folders_no_split_lists_are_reported(dataset, quality_rules):
    root, manifest = dataset
    root = Path(root)
    stray = Path(manifest.path[0]).parent / "forgotten_0.avi"
    shutil.copy(manifest.path[0], stray)
    extra = root / "juggle"
    extra.mkdir()
    shutil.copy(manifest.path[1], extra / "juggle_0.avi")
    report = run_quality_gate(manifest, quality_rules, data_root=root)
    assert report.success  # reported, not failed
    assert report.unlisted_videos == sorted([str(stray), str(extra / "juggle_0.avi")])
    assert report.unlisted_folders == [str(extra)]
    summary = report.summary()
    assert "Not in the dataset: 2 video(s) on disk that no split lists" in summary and str(stray) in summary
    assert f"1 folder(s) with videos none of which is listed: {extra}" in summary
    assert report.to_dict()["unlisted_folders"] == [str(extra)]


def test_an_hmdb51_layout_dataset_with_its_own_class_count_and_folders(tmp_path):
    """A 6-class dataset in the official HMDB51 layout, with its videos and split files in folders
    of its own choosing (`data.reader`), passes the gate with no count implied by the name; a wrong
    expectation fails saying what it expected, what it found and which key changes it."""
    from dtkd.data import DataConfig, prepare_manifest
    from dtkd.data.synthetic import generate_synthetic
    from dtkd_ops.quality import rules_for

    made = tmp_path / "made"
    generate_synthetic(made, num_classes=6, clips_per_class={"train": 2, "test": 1}, frames=8, size=32)
    root = tmp_path / "mydata"
    (root / "lists").mkdir(parents=True)
    for f in (made / "testTrainMulti_7030_splits").iterdir():
        shutil.copy(f, root / "lists" / f.name)
    shutil.copytree(made, tmp_path / "clips", ignore=shutil.ignore_patterns("testTrainMulti_7030_splits", "*.json"))

    data = DataConfig(dataset="hmdb51", root=root, reader={"video_dir": str(tmp_path / "clips"), "split_dir": "lists"})
    manifest = prepare_manifest(data)
    assert manifest["label"].nunique() == 6 and len(manifest) == 18
    report = run_quality_gate(manifest, rules_for(data, min_frames=8))
    assert report.success, report.summary()

    wrong = data.model_copy(update={"quality": data.quality.model_copy(update={"expected_num_classes": 51})})
    failed = run_quality_gate(manifest, rules_for(wrong, min_frames=8))
    assert not failed.success
    check = _check(failed, "label_set")
    assert check.description == "exactly 51 labels"
    assert check.detail.startswith("observed 6; to change it set data.quality.expected_labels or expected_num_classes")
    assert check.description in failed.summary() and check.detail in failed.summary()
    with pytest.raises(ValueError, match=r"reader: hmdb51 has no option\(s\) \['videodir'\]; its options: "):
        DataConfig(dataset="hmdb51", root=root, reader={"videodir": "x"})
