"""Cached teachers: same losses as online teachers on the same views, reuse/staleness, and a
training run that never calls a teacher yet always gets the outputs of the view it trains on."""
import json

import numpy as np
import pytest
import torch
from engine_helpers import ToyClips, fast_cfg, toy_distiller
from torch.utils.data import default_collate

from dtkd.engine import Trainer
from dtkd.engine.sampling import SeededViews, ViewKey
from dtkd.distill.teacher_cache import TeacherCache

# fp16 keeps 11 significant bits: stored logits/features are within ~5e-4 relative of the
# online ones, so losses computed from them agree to ~1e-3 relative.
FP16_RTOL, FP16_ATOL = 2e-3, 1e-4


def _batch(views: SeededViews, keys):
    return default_collate([views[k] for k in keys])


def _losses(distiller, batch, teacher_outputs=None):
    inputs = batch["inputs"] if teacher_outputs is None else {"student": batch["inputs"]["student"]}
    with torch.no_grad():
        out = distiller(inputs, batch["label"], teacher_outputs=teacher_outputs)
    return {k: v.item() for k, v in out.losses.items()}


def test_cached_and_online_teachers_give_the_same_losses_toy(tmp_path):
    d = toy_distiller(teachers=True).eval()
    views = SeededViews(ToyClips(10, views=("student", "cnn", "vit")), seed=2)
    cache = TeacherCache.build(d, views, tmp_path, num_views=3, batch_size=4)
    assert (cache.num_items, cache.num_views, sorted(cache.teachers)) == (10, 3, ["cnn", "vit"])
    assert cache.arrays["cnn"]["features"].dtype == np.float16
    keys = [ViewKey(i, (i * 7) % 3) for i in range(10)]
    batch = _batch(views, keys)
    online = _losses(d, batch)
    cached = _losses(d, batch, cache.lookup(batch["index"], batch["view_id"]))
    assert online.keys() == cached.keys() == {"ce", "kd", "feat"}
    for k in online:
        assert cached[k] == pytest.approx(online[k], rel=FP16_RTOL, abs=FP16_ATOL), k
    # A different view of the same clips gives different teacher outputs: the view id matters.
    other = cache.lookup(batch["index"], (batch["view_id"] + 1) % 3)
    assert not torch.allclose(other["cnn"]["logits"], cache.lookup(batch["index"], batch["view_id"])["cnn"]["logits"])


def test_cache_is_reused_and_rebuilt_when_the_teachers_change(tmp_path):
    d = toy_distiller(teachers=True)
    views = SeededViews(ToyClips(6, views=("student", "cnn", "vit")), seed=0)
    TeacherCache.build(d, views, tmp_path, num_views=2, batch_size=4)
    calls = d.teacher_calls
    TeacherCache.build(d, views, tmp_path, num_views=2, batch_size=4)
    assert d.teacher_calls == calls + 1  # reused: only the one-item shape probe ran
    with torch.no_grad():
        d.teachers["cnn"].head.bias.add_(1.0)
    rebuilt = TeacherCache.build(d, views, tmp_path, num_views=2, batch_size=4)
    assert d.teacher_calls > calls
    assert json.loads((tmp_path / "meta.json").read_text())["teacher_weights"] == rebuilt.meta["teacher_weights"]
    assert not list(tmp_path.glob(".*.tmp"))  # temp files were renamed into place


def test_a_cache_of_other_clip_contents_is_rebuilt_not_reused(tmp_path):
    # Same clip count, views, seed and teachers; only the videos' contents differ. The cache used
    # to be keyed on the count alone and was reused, stale.
    d = toy_distiller(teachers=True)
    old = TeacherCache.build(d, SeededViews(ToyClips(6, views=("student", "cnn", "vit"), seed=0)), tmp_path, num_views=1)
    before = np.array(old.arrays["cnn"]["logits"])
    calls = d.teacher_calls
    new = TeacherCache.build(d, SeededViews(ToyClips(6, views=("student", "cnn", "vit"), seed=5)), tmp_path, num_views=1)
    assert d.teacher_calls > calls + 1  # rebuilt: every clip went through the teachers again
    assert not np.allclose(np.array(new.arrays["cnn"]["logits"]), before)


def test_a_given_cache_of_other_contents_is_refused(tmp_path):
    from dtkd.engine import Trainer

    d = toy_distiller(teachers=True)
    d.teacher_cache = TeacherCache.build(d, SeededViews(ToyClips(8, views=("student", "cnn", "vit"), seed=3)), tmp_path,
                                         num_views=1)
    with pytest.raises(ValueError, match="built on other clips or views.*stale"):
        Trainer(d, fast_cfg(epochs=1), progress=False).fit(ToyClips(8, views=("student", "cnn", "vit"), seed=4))


def test_a_misshapen_cache_is_refused_naming_the_file(tmp_path):
    d = toy_distiller(teachers=True)
    TeacherCache.build(d, SeededViews(ToyClips(4, views=("student", "cnn", "vit"))), tmp_path, num_views=2)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["num_views"] = 3  # the arrays hold 2 views per clip
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"cnn\.logits\.npy: shape \(4, 2, 3\), meta.json says \(4, 3, 3\): a damaged"):
        TeacherCache(tmp_path)


def test_lookup_outside_the_cache_is_a_clear_error(tmp_path):
    d = toy_distiller(teachers=True)
    cache = TeacherCache.build(d, SeededViews(ToyClips(4, views=("student", "cnn", "vit"))), tmp_path, num_views=2)
    with pytest.raises(IndexError, match="2 views"):
        cache.lookup([0, 1], [0, 2])
    with pytest.raises(FileNotFoundError, match="no finished teacher cache"):
        TeacherCache(tmp_path / "nothing")


def test_training_with_cached_teachers_never_runs_a_teacher_and_sees_the_cached_views(tmp_path, monkeypatch):
    from dtkd.distill import distiller as distiller_module

    d = toy_distiller(teachers=True, cache_views=2)
    cfg = fast_cfg(epochs=3)
    full = SeededViews(ToyClips(12, views=("student", "cnn", "vit")), seed=cfg.seed)  # as the Trainer seeds them
    checked = []
    real_plan = distiller_module.cached_plan

    def checking_plan(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        extras = plan.extras

        def checking_extras(batch):
            # Only the student's view is rendered; it is exactly the view (index, view_id) of the
            # full dataset, and the cache hands over what the teachers say on that view.
            assert set(batch["inputs"]) == {"student"}
            out = extras(batch)["teacher_outputs"]
            keys = [ViewKey(i, v) for i, v in zip(batch["index"].tolist(), batch["view_id"].tolist())]
            ref = _batch(full, keys)
            assert torch.equal(ref["inputs"]["student"], batch["inputs"]["student"])
            calls = d.teacher_calls
            live = d.teacher_forward(ref["inputs"])
            d.teacher_calls = calls
            for name in live:
                for field in ("logits", "features"):
                    torch.testing.assert_close(out[name][field], live[name][field].float(), rtol=FP16_RTOL, atol=2e-3)
            checked.append((len(keys), calls))
            return {"teacher_outputs": out}

        plan.extras = checking_extras
        return plan

    monkeypatch.setattr(distiller_module, "cached_plan", checking_plan)
    forward = d.forward
    d.forward = lambda inputs, target, teacher_outputs=None: forward(inputs, target, teacher_outputs=teacher_outputs)
    result = Trainer(d, cfg, checkpoint_dir=tmp_path, progress=False).fit(full.base)
    assert sum(n for n, _ in checked) == 3 * 12  # every training clip was checked
    # Teachers ran only while building the cache (1 shape probe + 12 clips x 2 views / batch 4).
    assert {calls for _, calls in checked} == {1 + 12 * 2 // 4} == {d.teacher_calls}
    assert json.loads((tmp_path / "teacher_cache" / "meta.json").read_text())["num_views"] == 2
    assert np.isfinite(result.final_metrics["train_loss/kd"])


@pytest.fixture(scope="module")
def real_views(synthetic_manifest):
    """Real videos (tests/conftest.py's synthetic set), the real ClipDataset, the tiny models' views."""
    from dtkd import models
    from dtkd.data import ClipDataset, ViewSpec

    manifest = synthetic_manifest
    names = {"student": "x3d_tiny", "cnn": "x3d_tiny_m", "vit": "mvit_tiny"}
    views = {v: ViewSpec.from_spec(models.get_spec(m)) for v, m in names.items()}
    return SeededViews(ClipDataset(manifest, "train", views, train=True, seed=5), seed=11), names


@pytest.mark.slow
def test_real_clip_views_are_reproducible_from_index_and_view_id(real_views):
    views, _ = real_views
    a, b = views[ViewKey(3, 1)], views[ViewKey(3, 1)]
    views[ViewKey(0, 0)]  # other items in between change nothing
    c = views[ViewKey(3, 1)]
    for v in a["inputs"]:
        assert torch.equal(a["inputs"][v], b["inputs"][v]) and torch.equal(a["inputs"][v], c["inputs"][v])
    assert not torch.equal(a["inputs"]["student"], views[ViewKey(3, 2)]["inputs"]["student"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:phi_CNN fitted")  # phi from one batch is fine for this comparison
def test_cached_and_online_teachers_give_the_same_dtkd_losses(real_views, tmp_path):
    from dtkd import models
    from dtkd.distill import DistillConfig, TeacherRef, build_distiller

    views, names = real_views
    torch.manual_seed(0)
    built = {v: models.build(m, 3) for v, m in names.items()}
    teachers = [TeacherRef(v, built[v], models.get_spec(names[v]), v) for v in ("cnn", "vit")]
    d = build_distiller(DistillConfig(method="dtkd"), built["student"], models.get_spec(names["student"]), teachers)
    keys = [ViewKey(i, i % 3) for i in range(len(views))]
    batch = _batch(views, keys)
    d.prepare([batch])
    d.eval()  # BN in eval: the two student passes below are identical apart from the teachers
    cache = TeacherCache.build(d, views, tmp_path, num_views=3, batch_size=6)
    online = _losses(d, batch)
    cached = _losses(d, batch, cache.lookup(batch["index"], batch["view_id"]))
    assert online.keys() == cached.keys() == {"ce", "sr", "sd", "rkd"}
    assert cached["ce"] == online["ce"]  # the student side is untouched
    for k in ("sr", "rkd"):
        assert cached[k] == pytest.approx(online[k], rel=FP16_RTOL, abs=FP16_ATOL), k
    # L_SD keeps only locations above a quantile of the residual: an fp16 rounding can move a
    # location across the threshold, so it gets a looser (still small) tolerance.
    assert cached["sd"] == pytest.approx(online["sd"], rel=1e-2), "sd"


def test_a_cache_without_a_directory_lives_only_as_long_as_fit(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    d = toy_distiller(teachers=True, cache_views=1)
    result = Trainer(d, fast_cfg(epochs=1), progress=False).fit(ToyClips(8, views=("student", "cnn", "vit")))
    assert np.isfinite(result.final_metrics["train_loss/kd"])
    assert d.teacher_calls > 0 and not list(tmp_path.glob("dtkd-teacher-cache-*"))


def test_two_builds_of_one_cache_at_once_both_succeed_and_agree(tmp_path):
    # Two runs on one home used to share temp names: one renamed the other's file away and failed
    # with FileNotFoundError. Now the second waits for the first and reuses its cache.
    import threading

    results, errors = {}, []
    distillers = {k: toy_distiller(teachers=True) for k in ("a", "b")}

    def build(name):
        try:
            views = SeededViews(ToyClips(64, views=("student", "cnn", "vit")), seed=0)
            results[name] = TeacherCache.build(distillers[name], views, tmp_path / "cache", num_views=3, batch_size=4)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=build, args=(k,)) for k in distillers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    a, b = (np.array(results[k].arrays["cnn"]["logits"]) for k in ("a", "b"))
    assert np.array_equal(a, b)
    calls = sorted(d.teacher_calls for d in distillers.values())
    assert calls[0] == 1 and calls[1] > 1  # one built it, the other only probed a shape and reused it
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_the_teacher_fingerprint_ignores_the_memory_layout():
    # A 1x1x1 or depthwise conv weight in channels_last_3d has size-1 dims: "contiguous" by
    # PyTorch's rule with a last stride > 1, which a byte view refused (training.channels_last).
    from dtkd.distill.teacher_cache import teacher_fingerprint

    torch.manual_seed(0)
    frozen = torch.nn.Sequential(torch.nn.Conv3d(4, 4, 1), torch.nn.Conv3d(4, 4, 3, groups=4)).requires_grad_(False)
    before = teacher_fingerprint(frozen)
    assert teacher_fingerprint(frozen.to(memory_format=torch.channels_last_3d)) == before
