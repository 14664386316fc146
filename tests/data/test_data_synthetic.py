"""The synthetic generator: layout, split files, determinism, decodability, CLI."""
from __future__ import annotations

import hashlib
import json

import av
import numpy as np
import pytest

from dtkd.data import build_manifest, read_frames
from dtkd.data.synthetic import (META_FILE, SPLITS_DIR, class_names, generate_synthetic, main,
                                 split_assignment)
from dtkd.data.synthetic_scenes import COMPOSED, SCENES

SMALL = dict(num_classes=3, clips_per_class={"train": 3, "test": 2}, frames=8, size=32, fps=8)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_split_files(synthetic_root):
    classes = ["approach", "separate", "move_same_direction"]
    assert sorted(p.name for p in synthetic_root.iterdir() if p.is_dir()) == sorted(classes + [SPLITS_DIR])
    for name in classes:
        videos = sorted(p.name for p in (synthetic_root / name).iterdir())
        assert videos == [f"{name}_{i:04d}.avi" for i in range(6)]
        for k in (1, 2, 3):
            lines = (synthetic_root / SPLITS_DIR / f"{name}_test_split{k}.txt").read_text().splitlines()
            parsed = [line.split() for line in lines]
            assert [p[0] for p in parsed] == videos
            ids = [p[1] for p in parsed]
            assert ids.count("1") == 4 and ids.count("2") == 2 and set(ids) == {"1", "2"}
    split1 = (synthetic_root / SPLITS_DIR / "approach_test_split1.txt").read_text().split()
    assert split1[1::2] == ["1", "1", "1", "1", "2", "2"]


def test_split_assignment_rotates_by_a_third():
    counts = {"train": 4, "test": 2, "unused": 0}
    assert split_assignment(counts, 1) == [1, 1, 1, 1, 2, 2]
    assert split_assignment(counts, 2) == [2, 2, 1, 1, 1, 1]  # rotated right by 6 // 3 = 2
    assert split_assignment(counts, 3) == [1, 1, 2, 2, 1, 1]  # rotated right by 4
    with_unused = split_assignment({"train": 2, "test": 1, "unused": 1}, 1)
    assert with_unused == [1, 1, 2, 0]


def test_every_video_decodes_with_the_configured_shape(synthetic_root):
    videos = sorted(synthetic_root.rglob("*.avi"))
    assert len(videos) == 18
    for path in videos:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            assert float(stream.average_rate) == 8.0
        assert len(frames) == 16 and frames[0].shape == (32, 32, 3)


def test_manifest_labels_follow_folders(synthetic_manifest):
    m = synthetic_manifest
    for row in m.itertuples():
        assert row.path.endswith(f"/{row.label}/{row.video_id}.avi")
    assert sorted(m["label"].unique()) == ["approach", "move_same_direction", "separate"]
    assert dict(zip(m["label"], m["label_idx"])) == {"approach": 0, "move_same_direction": 1, "separate": 2}
    assert m["split"].value_counts().to_dict() == {"train": 12, "test": 6}


def test_same_seed_gives_byte_identical_files_other_seed_differs(tmp_path):
    a = generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    b = generate_synthetic(tmp_path / "b", seed=3, **SMALL)
    c = generate_synthetic(tmp_path / "c", seed=4, **SMALL)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    videos = [k for k in da if k.endswith(".avi")]
    assert all(da[k] != dc[k] for k in videos)
    # Decoded frames agree too (what training sees).
    first = videos[0]
    assert np.array_equal(read_frames(a / first, range(8)).numpy(), read_frames(b / first, range(8)).numpy())


def test_clips_do_not_depend_on_how_many_are_generated(tmp_path):
    few = generate_synthetic(tmp_path / "few", seed=1, **SMALL)
    more = generate_synthetic(tmp_path / "more", seed=1, **{**SMALL, "clips_per_class": {"train": 6, "test": 3}})
    name = "separate/separate_0004.avi"
    assert (few / name).read_bytes() == (more / name).read_bytes()


def test_classes_differ_in_motion_not_in_static_appearance(tmp_path):
    """Guard against a shortcut: the mean colour of a clip must not identify its class."""
    root = generate_synthetic(tmp_path / "r", num_classes=6, clips_per_class={"train": 6, "test": 1},
                              frames=8, size=32, seed=0)
    means = {}
    for name in class_names(6):
        means[name] = np.mean([read_frames(p, range(8)).float().mean().item()
                               for p in sorted((root / name).glob("*.avi"))])
    spread_between = np.std(list(means.values()))
    assert spread_between < 15, means  # per-clip backgrounds vary by ~25 levels


def test_existing_root_is_reused_or_refused(tmp_path):
    root = generate_synthetic(tmp_path / "r", seed=0, **SMALL)
    meta = json.loads((root / META_FILE).read_text())
    assert meta["seed"] == 0 and meta["clips_per_class"] == {"train": 3, "val": 0, "test": 2, "unused": 0}
    stamp = (root / META_FILE).stat().st_mtime_ns
    assert generate_synthetic(root, seed=0, **SMALL) == root
    assert (root / META_FILE).stat().st_mtime_ns == stamp  # same knobs: nothing rewritten
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_synthetic(root, seed=1, **SMALL)
    generate_synthetic(root, seed=1, overwrite=True, **SMALL)
    assert json.loads((root / META_FILE).read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".r.lock"]  # no temp dirs left


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1), "2..8"),
    (dict(num_classes=len(SCENES) + 1), "2..8"),
    (dict(clips_per_class={"train": 0, "test": 2}), "train >= 1"),
    (dict(clips_per_class={"train": 2, "holdout": 2}), "unknown keys"),
    (dict(vocabulary="imagenet"), "vocabulary='imagenet'"),
    (dict(vocabulary="pretrain", num_classes=31), "2..30"),
    (dict(size=33), "even size"),
    (dict(difficulty="extreme"), "difficulty='extreme'"),
])
def test_invalid_knobs_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic(tmp_path / "r", **kwargs)


def test_cli_writes_a_dataset_that_builds_a_manifest(tmp_path, capsys):
    assert main(["--root", str(tmp_path / "cli"), "--num-classes", "2", "--train", "2", "--test", "1",
                 "--frames", "8", "--size", "32"]) == 0
    assert "6 clips, 2 classes" in capsys.readouterr().out
    m = build_manifest("synthetic", tmp_path / "cli", split=2)
    assert len(m) == 6 and set(m["frames"]) == {8} and set(m["width"]) == {32}


def test_difficulty_presets_change_the_nuisance_only(tmp_path):
    """Same seed and class: the easy preset's background is static and nearly noise-free."""
    easy = generate_synthetic(tmp_path / "easy", seed=0, difficulty="easy", **SMALL)
    hard = generate_synthetic(tmp_path / "hard", seed=0, difficulty="hard", **SMALL)
    def flicker(root):  # per-pixel change over time in a corner that mostly shows background
        frames = read_frames(root / "approach" / "approach_0000.avi", range(8)).float()
        return frames[:, :6, :6].std(dim=0).mean().item()
    assert flicker(hard) > 2 * flicker(easy)
    assert json.loads((easy / META_FILE).read_text())["nuisance"]["distractor_prob"] == 0.0


def test_val_split_is_written_with_id_3_and_read_as_val(tmp_path):
    root = generate_synthetic(tmp_path / "r", seed=0, **{**SMALL, "clips_per_class": {"train": 3, "val": 2, "test": 1}})
    ids = (root / SPLITS_DIR / "approach_test_split1.txt").read_text().split()[1::2]
    assert ids == ["1", "1", "1", "3", "3", "2"]
    m = build_manifest("synthetic", root)
    assert m["split"].value_counts().to_dict() == {"train": 9, "val": 6, "test": 3}
    # A real HMDB51 fold has no validation id: read as hmdb51, the same files are refused, by line.
    with pytest.raises(ValueError, match=r"line 4.*<0\|1\|2>"):
        build_manifest("hmdb51", root)


def test_pretrain_vocabulary_composes_the_primitives_into_30_classes(tmp_path):
    names = class_names(30, "pretrain")
    assert names == list(COMPOSED) and len(set(names)) == 30
    assert not set(names) & set(SCENES)  # other classes than the task's, from the same world
    distance, turn, drift = zip(*(n.split("-") for n in names))
    assert len(set(distance)) == 5 and set(turn) == {"still", "turn"} and set(drift) == {"still", "along", "across"}
    root = generate_synthetic(tmp_path / "p", vocabulary="pretrain", num_classes=4, seed=0,
                              clips_per_class={"train": 2, "test": 1}, frames=8, size=32)
    m = build_manifest("synthetic", root)
    assert sorted(m["label"].unique()) == sorted(names[:4]) and len(m) == 12
    assert json.loads((root / META_FILE).read_text())["vocabulary"] == "pretrain"


def test_composed_scenes_do_what_their_names_say():
    """closer: the distance shrinks; turn: the axis between the objects rotates; along: the pair's
    centre moves along its initial axis."""
    from dtkd.data.synthetic_scenes import COMPOSED

    u = np.linspace(0, 1, 16)
    a, b = COMPOSED["closer-turn-along"](u, np.random.default_rng(0))
    gap = np.linalg.norm(b - a, axis=1)
    assert gap[-1] < gap[0] - 0.2
    angle = np.unwrap(np.arctan2(*(b - a).T[::-1]))
    assert abs(angle[-1] - angle[0]) > 0.5 * np.pi
    centre = (a + b) / 2
    assert abs(centre[-1, 0] - centre[0, 0]) > 0.2 and np.allclose(centre[:, 1], 0)
    a, b = COMPOSED["apart-still-still"](u, np.random.default_rng(0))
    assert np.allclose((a + b) / 2, 0) and np.allclose((b - a)[:, 1], 0)
    gap = np.linalg.norm(b - a, axis=1)
    assert np.all(np.diff(gap) > 0)


def test_the_two_vocabularies_never_share_a_clip(tmp_path):
    """Same seed, class index and clip index: the pretraining corpus still draws other nuisances."""
    target = generate_synthetic(tmp_path / "t", seed=0, **SMALL)
    corpus = generate_synthetic(tmp_path / "p", vocabulary="pretrain", seed=0, **SMALL)
    a = read_frames(target / "approach" / "approach_0000.avi", range(8)).float()
    first = class_names(3, "pretrain")[0]
    b = read_frames(corpus / first / f"{first}_0000.avi", range(8)).float()
    assert (a[0] - b[0]).abs().mean() > 5  # different backgrounds from the first frame on


def test_a_second_writer_of_one_root_waits_for_the_first_and_reuses_its_dataset(tmp_path):
    """Two runs on one data root (two `make run`s, a run and `make data`) used to both generate
    it, the later one swapping the root under the first, which was already reading it. Now a
    writer holds the root's lock (fsutil.one_writer): a second one waits, then reuses the dataset,
    so only one staged copy is ever written."""
    import subprocess
    import sys
    import threading
    import time

    root = tmp_path / "videos"
    cmd = [sys.executable, "-m", "dtkd.data.synthetic", "--root", str(root), "--num-classes", "3",
           "--train", "12", "--test", "4", "--frames", "8", "--size", "32"]
    staged, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            staged.update(p.name for p in tmp_path.glob(".videos.tmp-*"))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while not staged and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert staged, "the first writer never staged a copy"
        # The first is writing now: this second writer must wait for it, then reuse its dataset.
        generate_synthetic(root, num_classes=3, clips_per_class={"train": 12, "test": 4}, frames=8, size=32)
        out, err = first.communicate(timeout=300)
    finally:
        done.set()
        watcher.join()
    assert first.returncode == 0, err[-2000:]
    assert len(staged) == 1, f"two writers staged copies: {sorted(staged)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".videos.lock", "videos"]  # no staged leftovers
    assert len(list(root.rglob("*.avi"))) == 3 * 16
