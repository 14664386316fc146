"""ClipDataset invariants, read back from pixels: every view of a train item shows the same
temporal window and crop box; test items carry num_clips x num_crops views in order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from dtkd.data import MANIFEST_COLUMNS, ClipDataset, ViewSpec, probe_video

from data_helpers import STEP, write_index_video

MEAN, STD = (0.45, 0.4, 0.5), (0.25, 0.2, 0.3)
VIEWS = {  # all span 16 source frames
    "student": ViewSpec(frames=8, sampling_rate=2, crop_size=32, mean=MEAN, std=STD),
    "cnn": ViewSpec(frames=4, sampling_rate=4, crop_size=16, mean=MEAN, std=STD),
    "vit": ViewSpec(frames=16, sampling_rate=1, crop_size=24, mean=MEAN, std=STD),
}
STRIDE = {"student": 2, "cnn": 4, "vit": 1}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Three 32-frame 48x64 index videos (two train, one test)."""
    root = tmp_path_factory.mktemp("index")
    rows = []
    for i, split in enumerate(["train", "train", "test"]):
        path = write_index_video(root / f"v{i}.avi", frames=32, height=48, width=64)
        info = probe_video(path)
        rows.append(dict(video_id=f"v{i}", path=str(path), label=f"c{i % 2}", label_idx=i % 2, split=split,
                         frames=info["frames"], fps=info["fps"], width=info["width"], height=info["height"]))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _pixels(x: torch.Tensor, view: ViewSpec) -> torch.Tensor:
    """Undo normalisation: (C, T, H, W) float -> 0..255 values."""
    mean = torch.tensor(view.mean).view(3, 1, 1, 1)
    std = torch.tensor(view.std).view(3, 1, 1, 1)
    return (x * std + mean) * 255


def _frame_ids(x, view) -> list[int]:
    blue = _pixels(x, view)[2].mean(dim=(1, 2))
    return [int(round(b / STEP)) for b in blue.tolist()]


def _box_signature(x, view):
    """Mean red (box centre x), mean green (box centre y), red left-minus-right (width, flip)."""
    p = _pixels(x, view)
    return p[0].mean().item(), p[1].mean().item(), (p[0][..., 0].mean() - p[0][..., -1].mean()).item()


def test_train_views_share_window_and_box(manifest):
    ds = ClipDataset(manifest, "train", VIEWS, train=True, seed=0)
    ds.set_epoch(0)
    centres = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            item = ds[index]
            assert item["index"] == index and item["label"] == index % 2
            starts = set()
            for name, view in VIEWS.items():
                x = item["inputs"][name]
                assert tuple(x.shape) == (3, view.frames, view.crop_size, view.crop_size)
                ids = _frame_ids(x, view)
                assert np.all(np.diff(ids) == STRIDE[name]), (name, ids)
                starts.add(ids[0])
            assert len(starts) == 1 and 0 <= starts.pop() <= 16
            sigs = np.array([_box_signature(item["inputs"][k], v) for k, v in VIEWS.items()])
            # Same box: equal centre; same width and flip: equal left-right gradient (sign too).
            assert np.ptp(sigs[:, 0]) < 3 and np.ptp(sigs[:, 1]) < 3, sigs
            assert np.ptp(sigs[:, 2]) < 0.15 * abs(sigs[:, 2]).max() + 4, sigs
            centres.add(round(sigs[0, 0]))
    assert len(centres) > 3  # boxes really vary, so the agreement above means something


def test_test_items_have_clip_major_views(manifest):
    ds = ClipDataset(manifest, "test", VIEWS, train=False, num_clips=3, num_crops=3)
    assert len(ds) == 1
    item = ds[0]
    for name, view in VIEWS.items():
        x = item["inputs"][name]
        assert tuple(x.shape) == (9, 3, view.frames, view.crop_size, view.crop_size)
        # Windows of 16 frames in a 32-frame video start at 0, 8, 16.
        firsts = [_frame_ids(x[v], view)[0] for v in range(9)]
        assert firsts == [0, 0, 0, 8, 8, 8, 16, 16, 16]
        # Crops of the 48x64 frame: left, centre, right -> mean red rises; mean green is constant.
        reds = [_box_signature(x[v], view)[0] for v in range(3)]
        assert reds[0] < reds[1] < reds[2]
        assert reds[1] == pytest.approx(255 / 2, abs=3)
        assert np.ptp([_box_signature(x[v], view)[1] for v in range(9)]) < 2
    # Test items are deterministic.
    again = ds[0]
    assert all(torch.equal(item["inputs"][k], again["inputs"][k]) for k in VIEWS)


def test_epoch_seeding_is_reproducible_and_varies(manifest):
    a = ClipDataset(manifest, "train", VIEWS, train=True, seed=5)
    b = ClipDataset(manifest, "train", VIEWS, train=True, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(a[1]["inputs"]["vit"], b[1]["inputs"]["vit"])
    renders = []
    for epoch in range(4):
        a.set_epoch(epoch)
        renders.append(a[1]["inputs"]["vit"])
    assert any(not torch.equal(renders[0], r) for r in renders[1:])


def test_without_set_epoch_torch_seed_controls_randomness(manifest):
    ds = ClipDataset(manifest, "train", VIEWS, train=True)
    torch.manual_seed(11)
    first = ds[0]["inputs"]["cnn"]
    torch.manual_seed(11)
    assert torch.equal(ds[0]["inputs"]["cnn"], first)


def test_workers_render_what_the_main_process_renders(manifest):
    ds = ClipDataset(manifest, "train", {"cnn": VIEWS["cnn"]}, train=True, seed=1)
    loader = DataLoader(ds, batch_size=2, num_workers=1)  # workers copy the dataset per epoch
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        batch = next(iter(loader))
        assert tuple(batch["inputs"]["cnn"].shape) == (2, 3, 4, 16, 16)
        expected = torch.stack([ds[i]["inputs"]["cnn"] for i in range(2)])
        assert torch.equal(batch["inputs"]["cnn"], expected)
        assert batch["index"].tolist() == [0, 1]


def test_views_accept_model_spec_like_objects(manifest):
    class Spec:  # what dtkd.models.get_spec returns, reduced to the input fields
        frames, sampling_rate, crop_size, mean, std = 4, 2, 16, MEAN, STD

    ds = ClipDataset(manifest, "test", {"s": Spec()}, train=False)
    assert tuple(ds[0]["inputs"]["s"].shape) == (1, 3, 4, 16, 16)


def test_constructor_errors_name_the_problem(manifest):
    with pytest.raises(ValueError, match="split='validation'"):
        ClipDataset(manifest, "validation", VIEWS, train=False)
    with pytest.raises(ValueError, match=r"lacks columns \['frames'\]"):
        ClipDataset(manifest.drop(columns="frames"), "train", VIEWS, train=True)
    with pytest.raises(ValueError, match="num_clips and num_crops must be 1"):
        ClipDataset(manifest, "train", VIEWS, train=True, num_clips=2)
    with pytest.raises(ValueError, match="views is empty"):
        ClipDataset(manifest, "train", {}, train=True)
    flagged = manifest.assign(ok=[True, False, True], error=["", "file not found", ""])
    with pytest.raises(ValueError, match="1 videos flagged bad, e.g. .*v1.avi"):
        ClipDataset(flagged, "train", VIEWS, train=True)


def test_missing_video_at_read_time_names_the_file(manifest, tmp_path):
    gone = manifest.copy()
    gone.loc[0, "path"] = str(tmp_path / "deleted.avi")
    ds = ClipDataset(gone, "train", VIEWS, train=True)
    with pytest.raises(Exception, match="deleted.avi: file not found"):
        ds[0]


def test_a_subset_of_views_renders_exactly_those_views_of_the_same_window(manifest):
    ds = ClipDataset(manifest, "train", VIEWS, train=True, seed=3)
    ds.set_epoch(1)
    student = ds.with_views(["student"])
    student.set_epoch(1)
    full, alone = ds[1], student[1]
    assert set(alone["inputs"]) == {"student"}
    assert torch.equal(full["inputs"]["student"], alone["inputs"]["student"])
    with pytest.raises(ValueError, match="non-empty subset"):
        ds.with_views(["nope"])


def test_the_content_key_follows_the_bytes_views_and_knobs(manifest, tmp_path):
    import shutil

    rows = manifest[manifest["split"] == "train"].head(2).copy()
    paths = []
    for i, src in enumerate(rows["path"]):
        paths.append(str(shutil.copy(src, tmp_path / f"v{i}{Path(src).suffix}")))
    rows["path"] = paths
    key = ClipDataset(rows, "train", VIEWS, train=True).content_key()
    assert ClipDataset(rows, "train", VIEWS, train=True).content_key() == key  # deterministic
    assert ClipDataset(rows, "train", VIEWS, train=True).with_views(["student"]).content_key() == key
    assert ClipDataset(rows, "train", VIEWS, train=True, seed=1).content_key() != key
    assert ClipDataset(rows, "train", VIEWS, train=True, train_scale=(0.5, 1.0)).content_key() != key
    assert ClipDataset(rows, "train", {"student": VIEWS["student"]}, train=True).content_key() != key
    write_index_video(Path(paths[0]), frames=24, height=48, width=64)  # same name, other bytes
    assert ClipDataset(rows, "train", VIEWS, train=True).content_key() != key


def _labelled(n_per_class: int, classes=("a", "b")) -> pd.DataFrame:
    rows = [dict(video_id=f"{c}{i}", path=f"/x/{c}{i}.avi", label=c, label_idx=k, split="train", frames=16, fps=8.0,
                 width=32, height=32) for k, c in enumerate(classes) for i in range(n_per_class)]
    rows.append(dict(video_id="t0", path="/x/t0.avi", label="a", label_idx=0, split="test", frames=16, fps=8.0,
                     width=32, height=32))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def test_validation_carve_out_is_stratified_deterministic_and_order_free():
    from dtkd.data.manifest import carve_validation

    df = _labelled(10)
    out = carve_validation(df, 0.2, seed=0)
    counts = out.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", "a"): 8, ("train", "b"): 8, ("val", "a"): 2, ("val", "b"): 2, ("test", "a"): 1}
    assert list(out["split"]) == ["train"] * 16 + ["val"] * 4 + ["test"]  # the manifest's row order
    shuffled = carve_validation(df.sample(frac=1.0, random_state=3), 0.2, seed=0)
    assert shuffled.equals(out)  # the rows' order does not choose the clips
    other = carve_validation(df, 0.2, seed=1)
    assert set(other[other.split == "val"].video_id) != set(out[out.split == "val"].video_id)
    assert carve_validation(df, 0.0) is df
    assert (carve_validation(_labelled(2), 0.9).groupby("split").size().to_dict()
            == {"train": 2, "val": 2, "test": 1})  # at least one clip stays in train


def test_validation_carve_out_refuses_what_it_cannot_do():
    from dtkd.data.manifest import carve_validation

    with pytest.raises(ValueError, match="class 'a' has 1 train clip"):
        carve_validation(_labelled(1), 0.5)
    with pytest.raises(ValueError, match="already has a 'val' split"):
        carve_validation(carve_validation(_labelled(4), 0.5), 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        carve_validation(_labelled(4), 1.0)
