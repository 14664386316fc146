"""The pre-decoded clip store: round trip, resize, fingerprint, reuse, atomic replace."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from dtkd.data import ClipDataset, ClipStore, ViewSpec, build_store, read_frames
from dtkd.data.store import INDEX, resize_short_side

VIEWS = {"student": ViewSpec(frames=8, sampling_rate=2, crop_size=24),
         "cnn": ViewSpec(frames=4, sampling_rate=4, crop_size=16)}


@pytest.fixture(scope="module")
def store(synthetic_manifest, tmp_path_factory):
    return build_store(synthetic_manifest, tmp_path_factory.mktemp("stores") / "full")


def test_store_frames_equal_decoded_frames(store, synthetic_manifest):
    assert len(store) == len(synthetic_manifest) and store.short_side is None
    for row in synthetic_manifest.itertuples():
        decoded = read_frames(row.path, range(row.frames))
        assert store.shape(row.video_id) == tuple(decoded.shape) == (16, 32, 32, 3)
        assert torch.equal(store.read(row.video_id, range(row.frames)), decoded)
    vid = synthetic_manifest["video_id"].iloc[0]
    assert torch.equal(store.read(vid, [3, 1, 3, 17]), store.read(vid, [3, 1, 3, 15]))  # tail repeats


@pytest.mark.parametrize("train", [True, False])
def test_dataset_items_from_store_equal_decoding(store, synthetic_manifest, train):
    split = "train" if train else "test"
    kwargs = dict(train=train, seed=3) if train else dict(train=False, num_clips=2, num_crops=3)
    decoded = ClipDataset(synthetic_manifest, split, VIEWS, **kwargs)
    stored = ClipDataset(synthetic_manifest, split, VIEWS, store=store.root, **kwargs)
    for ds in (decoded, stored):
        ds.set_epoch(4)
    for index in range(len(decoded)):
        a, b = decoded[index], stored[index]
        assert a["label"] == b["label"] and a["index"] == b["index"]
        for k in VIEWS:
            assert torch.equal(a["inputs"][k], b["inputs"][k])


def test_resized_store_keeps_aspect_and_matches_a_resize_of_the_decode(synthetic_manifest, tmp_path):
    small = build_store(synthetic_manifest.head(2), tmp_path / "small", short_side=16)
    row = synthetic_manifest.iloc[0]
    assert small.shape(row.video_id) == (16, 16, 16, 3)
    expected = resize_short_side(read_frames(row.path, range(16)), 16)
    assert torch.equal(small.read(row.video_id, range(16)), expected)
    wide = torch.zeros(2, 48, 64, 3, dtype=torch.uint8)
    assert tuple(resize_short_side(wide, 24).shape) == (2, 24, 32, 3)
    assert resize_short_side(wide, 100) is wide  # never enlarges


def test_fingerprint_depends_on_content_only(synthetic_manifest, store, tmp_path):
    again = build_store(synthetic_manifest, tmp_path / "again")
    assert again.fingerprint == store.fingerprint
    resized = build_store(synthetic_manifest, tmp_path / "resized", short_side=16)
    fewer = build_store(synthetic_manifest.head(3), tmp_path / "fewer")
    assert len({store.fingerprint, resized.fingerprint, fewer.fingerprint}) == 3
    again.verify()


def test_existing_store_is_reused_refused_or_replaced(synthetic_manifest, tmp_path):
    root = tmp_path / "s"
    first = build_store(synthetic_manifest.head(2), root)
    stamp = (root / INDEX).stat().st_mtime_ns
    assert build_store(synthetic_manifest.head(2), root).fingerprint == first.fingerprint
    assert (root / INDEX).stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_store(synthetic_manifest.head(3), root)
    third = build_store(synthetic_manifest.head(3), root, overwrite=True)
    assert len(third) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.lock", "s"]  # no temp or old dirs left (the writers' lock stays)


def test_a_directory_that_is_not_a_store_is_never_replaced(synthetic_manifest, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a readable clip store"):
        build_store(synthetic_manifest.head(1), tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_tampered_bytes_fail_verification(synthetic_manifest, tmp_path):
    s = build_store(synthetic_manifest.head(2), tmp_path / "t")
    shard = tmp_path / "t" / s.shards[0]["file"]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"stored frames of '{synthetic_manifest.video_id.iloc[0]}'"):
        ClipStore(tmp_path / "t").verify()


def test_changed_source_video_invalidates_the_store(synthetic_manifest, tmp_path):
    import shutil

    src = tmp_path / "videos"
    m = synthetic_manifest.head(2).copy()
    paths = []
    for p in m["path"]:
        dst = src / p.split("/")[-1]
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(p, dst)
        paths.append(str(dst))
    m["path"] = paths
    s = build_store(m, tmp_path / "s")
    assert s.matches(m, None)
    shutil.copy(synthetic_manifest["path"].iloc[5], paths[0])  # other content, same name
    assert not s.matches(m, None)


def test_small_shards_split_videos_across_files(synthetic_manifest, tmp_path):
    s = build_store(synthetic_manifest.head(3), tmp_path / "sh", shard_bytes=16 * 32 * 32 * 3)
    assert [sh["file"] for sh in s.shards] == ["shard-00000.u8", "shard-00001.u8", "shard-00002.u8"]
    index = json.loads((tmp_path / "sh" / INDEX).read_text())
    assert [v["offset"] for v in index["videos"].values()] == [0, 0, 0]
    row = synthetic_manifest.iloc[2]
    assert torch.equal(s.read(row.video_id, [0, 15]), read_frames(row.path, [0, 15]))


def test_store_pickles_without_its_memory_maps(store, synthetic_manifest):
    vid = synthetic_manifest["video_id"].iloc[0]
    store.read(vid, [0])  # maps a shard
    clone = pickle.loads(pickle.dumps(store))
    assert clone._maps == {} and np.array_equal(clone.read(vid, [2]).numpy(), store.read(vid, [2]).numpy())


def test_missing_store_and_missing_videos_are_named(synthetic_manifest, tmp_path, store):
    with pytest.raises(FileNotFoundError, match="no clip store here"):
        ClipStore(tmp_path / "nothing")
    partial = build_store(synthetic_manifest.head(1), tmp_path / "p")
    with pytest.raises(KeyError, match="lacks 11 videos of split 'train'"):
        ClipDataset(synthetic_manifest, "train", VIEWS, train=True, store=partial)
    with pytest.raises(KeyError, match="'nope' is not in the clip store"):
        store.read("nope", [0])


def test_store_bytes_do_not_depend_on_where_the_dataset_lives(synthetic_manifest, tmp_path):
    # The store is a DVC output: two checkouts of the same data must produce identical bytes.
    import shutil

    subset = synthetic_manifest.head(3)
    indexes = []
    for place in ("checkout_a", "somewhere/else/checkout_b"):
        folder = tmp_path / place
        folder.mkdir(parents=True)
        moved = subset.copy()
        moved["path"] = [shutil.copy(p, folder / f"{i}.avi") for i, p in enumerate(subset["path"])]
        store = build_store(moved, folder / "store")
        indexes.append((store.root / INDEX).read_bytes())
    assert indexes[0] == indexes[1]
    assert b"checkout_a" not in indexes[0]
