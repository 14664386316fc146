"""Multi-head labels and losses: the code round trip, per-head CE and per-head distillation by
hand, and the multi-head metrics (verb / noun / action top-1 and top-5)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dtkd.data.heads import HeadLayout
from dtkd.distill.losses import kd_loss, sr_loss
from dtkd.distill.losses.heads import multihead_cross_entropy, per_head
from dtkd.eval.metrics import action_scores, head_counts, top1_correct

L = HeadLayout.of({"verb": 3, "noun": 4})


def test_layout_codes_round_trip_and_unlabelled_stays_minus_one():
    codes = L.encode({"verb": [0, 2, 1], "noun": [3, 0, 2]})
    assert codes.tolist() == [3, 8, 6]  # verb * 4 + noun
    assert L.encode([[2, 3]]).tolist() == [11] and L.combinations == 12 and L.total == 7
    dec = L.decode(torch.tensor([3, 8, 6, -1]))
    assert dec["verb"].tolist() == [0, 2, 1, -1] and dec["noun"].tolist() == [3, 0, 2, -1]
    every = torch.arange(12)
    back = L.decode(every)
    assert L.encode({k: v.numpy() for k, v in back.items()}).tolist() == every.tolist()


def test_layout_refuses_bad_values():
    with pytest.raises(ValueError, match="head 'noun' has 4 classes; got class index 4"):
        L.encode({"verb": [0], "noun": [4]})
    with pytest.raises(ValueError, match="reserved"):
        HeadLayout.of({"action": 3, "noun": 2})
    with pytest.raises(ValueError, match=">= 2 classes"):
        HeadLayout.of({"verb": 1})
    with pytest.raises(ValueError, match="expected 7 logits, got 6"):
        L.split(torch.zeros(2, 6))


def test_layout_spec_round_trips_and_a_malformed_one_is_quoted():
    assert L.spec == "verb:3,noun:4" and HeadLayout.parse(L.spec) == L
    for bad in ("verb:3,noun", "verb:x", "verb:3,noun:1"):
        with pytest.raises(ValueError, match="heads"):
            HeadLayout.parse(bad)
    with pytest.raises(ValueError, match="'verb:x'"):
        HeadLayout.parse("verb:x")


def test_multihead_ce_is_the_sum_of_the_heads_ce_on_labelled_clips():
    torch.manual_seed(0)
    logits = torch.randn(4, 7)
    target = torch.tensor([3, 8, -1, 6])
    want = (F.cross_entropy(logits[[0, 1, 3], :3], torch.tensor([0, 2, 1]))
            + F.cross_entropy(logits[[0, 1, 3], 3:], torch.tensor([3, 0, 2])))
    assert torch.allclose(multihead_cross_entropy(logits, target, L), want)
    weighted = multihead_cross_entropy(logits, target, L, weights={"noun": 0.5})
    assert torch.allclose(weighted, F.cross_entropy(logits[[0, 1, 3], :3], torch.tensor([0, 2, 1]))
                          + 0.5 * F.cross_entropy(logits[[0, 1, 3], 3:], torch.tensor([3, 0, 2])))
    none = multihead_cross_entropy(logits.requires_grad_(), torch.full((4,), -1), L)
    assert none.item() == 0.0 and none.requires_grad


def test_per_head_kd_and_datw_differ_from_the_concatenated_form():
    torch.manual_seed(1)
    s, t1, t2 = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 7)
    kd = per_head(lambda a, ts, tau: kd_loss(a, ts[0], tau), L, s, [t1], 2.0)
    want = kd_loss(s[:, :3], t1[:, :3], 2.0) + kd_loss(s[:, 3:], t1[:, 3:], 2.0)
    assert torch.allclose(kd, want)
    assert not torch.allclose(kd, kd_loss(s, t1, 2.0))  # one softmax over both heads is another loss
    sr = per_head(sr_loss, L, s, [t1, t2], 2.0)
    assert torch.allclose(sr, sr_loss(s[:, :3], [t1[:, :3], t2[:, :3]], 2.0) + sr_loss(s[:, 3:], [t1[:, 3:], t2[:, 3:]], 2.0))


def test_action_metrics_by_hand():
    # 3 clips; verb logits then noun logits
    logits = torch.tensor([
        [5., 0., 0., 0., 4., 0., 0.],   # verb 0, noun 1 (2nd best noun 0)
        [0., 5., 0., 0., 0., 0., 4.],   # verb 1, noun 3
        [2., 0., 5., 4., 0., 0., 0.],   # verb 2 (2nd best 0), noun 0
    ])
    target = torch.from_numpy(L.encode({"verb": [0, 1, 0], "noun": [0, 3, 0]}))
    c = head_counts(logits, target, L)
    assert c["verb_top1"] == 2 and c["noun_top1"] == 2  # clip 0 noun wrong; clip 2 verb wrong
    assert c["action_top1"] == 1 and int(top1_correct(logits, target, L)) == 1  # only clip 1 has both
    assert c["verb_top5"] == c["noun_top5"] == 3  # capped at the class count: always right
    # clip 0: true (0, 0): p_v(0) p_n(0) = 0.987 * 0.017, tied 2nd-4th with (0, 2), (0, 3) -> in the top 5
    # clip 2: true (0, 0): p_v(0) p_n(0) = 0.047 * 0.948, 2nd after (2, 0) -> in the top 5
    assert c["action_top5"] == 3
    scores = action_scores(logits, L)
    assert scores.shape == (3, 12)
    pv, pn = F.softmax(logits[0, :3], 0), F.softmax(logits[0, 3:], 0)
    assert math.isclose(scores[0, 0 * 4 + 1].exp().item(), (pv[0] * pn[1]).item(), rel_tol=1e-5)


def test_action_top5_can_miss_where_each_head_top5_hits():
    big = HeadLayout.of({"verb": 6, "noun": 6})
    logits = torch.cat([torch.arange(6.0).flip(0), torch.arange(6.0).flip(0)])[None]  # best class 0 in both
    target = torch.from_numpy(big.encode({"verb": [4], "noun": [4]}))  # 5th in each head
    c = head_counts(logits, target, big)
    assert c["verb_top5"] == c["noun_top5"] == 1 and c["action_top5"] == 0


def test_single_head_top1_correct_is_argmax_equality():
    logits = torch.tensor([[0., 1.], [2., 1.], [0., 3.]])
    assert int(top1_correct(logits, torch.tensor([1, 1, 1]))) == 2
    np.testing.assert_array_equal(top1_correct(logits, torch.tensor([1, 0, 1])).numpy(), 3)


# --- distillers with heads, on the toy models of distill_helpers ------------------------------------

def _heads_setup(seed=0):
    from distill_helpers import TinyCNN, TinyViT, cnn_spec, vit_spec
    from dtkd.distill import TeacherRef

    torch.manual_seed(seed)
    student = TinyCNN(L.total, width=6)
    refs = [TeacherRef(name="vit", model=TinyViT(L.total, dim=12), spec=vit_spec("tiny_vit", 12), role="vit"),
            TeacherRef(name="cnn", model=TinyCNN(L.total, width=10), spec=cnn_spec("tiny_cnn_m", 10), role="cnn")]
    return student, cnn_spec("tiny_cnn", 6), refs


def _heads_batch(seed=1):
    from distill_helpers import make_batch

    inputs, _ = make_batch(4, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return inputs, torch.randint(0, L.combinations, (4,), generator=g)


def _distiller(method, heads=L, **cfg):
    from distill_helpers import ToyTap
    from dtkd.distill import DistillConfig, build_distiller

    student, spec, refs = _heads_setup()
    d = build_distiller(DistillConfig(method=method, **cfg), student, spec, refs, tap_factory=ToyTap, heads=heads)
    d.set_epoch(0)
    d.prepare([{"inputs": _heads_batch(s)[0]} for s in range(3)])
    return d


@pytest.mark.parametrize("method", ["none", "kd", "dkd", "at", "dtkd"])
def test_multihead_distiller_ce_and_logit_terms_are_per_head(method):
    from dtkd.distill.losses import DKDLoss

    d = _distiller(method)
    inputs, target = _heads_batch()
    out = d(inputs, target)
    assert out.logits.shape == (4, L.total)
    assert torch.allclose(out.losses["ce"], multihead_cross_entropy(out.logits, target, L))
    with torch.no_grad():
        teach = {n: d.teachers[n](inputs[n]) for n in ("vit", "cnn")}
    s, ys = L.split(out.logits.detach()), L.decode(target)
    if method == "kd":
        t = L.split(teach["vit"])
        want = sum(kd_loss(s[h], t[h], d.cfg.tau) for h in L.names)
        assert torch.allclose(out.losses["kd"], want, atol=1e-6)
    if method == "dkd":
        t, loss = L.split(teach["vit"]), DKDLoss(d.cfg.dkd_alpha, d.cfg.dkd_beta, d.cfg.tau)
        assert torch.allclose(out.losses["dkd"], sum(loss(s[h], t[h], ys[h]) for h in L.names), atol=1e-6)
    if method == "dtkd":
        # L_SR: each head's own DATW over its own slices
        want = sum(sr_loss(s[h], [L.split(teach[n])[h] for n in ("vit", "cnn")], d.cfg.tau) for h in L.names)
        assert torch.allclose(out.losses["sr"], want, atol=1e-6)
        assert {"sd", "rkd"} <= set(out.losses)
        diag = d.epoch_diagnostics()["scalars"]
        assert "verb/datw/n_samples" in diag and "noun/datw/n_samples" in diag
    out.loss.backward()
    assert all(p.grad is None for p in d.teachers.parameters())


def test_single_head_distiller_unchanged_by_the_heads_code():
    """heads=None: the same loss as the plain single-label CE + KD on the same logits."""
    from distill_helpers import ToyTap
    from dtkd.distill import DistillConfig, build_distiller

    student, spec, refs = _heads_setup()
    d = build_distiller(DistillConfig(method="kd"), student, spec, refs, tap_factory=ToyTap)
    inputs, _ = _heads_batch()
    target = torch.tensor([0, 6, 3, 2])
    out = d(inputs, target)
    with torch.no_grad():
        t = d.teachers["vit"](inputs["vit"])
    want = F.cross_entropy(out.logits, target) + d.cfg.alpha * kd_loss(out.logits, t, d.cfg.tau)
    assert torch.equal(out.loss, want)


def test_single_head_dtkd_sr_and_its_diagnostics_keep_their_plain_names():
    from distill_helpers import ToyTap
    from dtkd.distill import DistillConfig, build_distiller

    student, spec, refs = _heads_setup()
    d = build_distiller(DistillConfig(method="dtkd", use_sd=False, use_rkd=False), student, spec, refs,
                        tap_factory=ToyTap)
    inputs, _ = _heads_batch()
    out = d(inputs, torch.tensor([0, 6, 3, 2]))
    with torch.no_grad():
        teach = [d.teachers[n](inputs[n]) for n in ("vit", "cnn")]
    assert torch.allclose(out.losses["sr"], sr_loss(out.logits.detach(), teach, d.cfg.tau), atol=1e-6)
    diag = d.epoch_diagnostics()["scalars"]
    assert diag["datw/n_samples"] == 4.0 and not any(k.startswith("logits/") for k in diag)


def test_methods_without_a_multihead_form_refuse_heads():
    with pytest.raises(ValueError, match="method 'ofa' has no multi-head form.*dtkd"):
        _distiller("ofa")
