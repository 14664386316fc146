"""Distillers end to end on tiny models: every method, freezing, export, cache, diagnostics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from distill_helpers import NUM_CLASSES, TinyCNN, ToyTap, cnn_spec, make_batch, make_setup
from dtkd.distill import DISTILLERS, DistillConfig, TeacherRef, build_distiller

METHODS = ["none", "kd", "dkd", "at", "mgd", "rkd", "dtkd"]


def build(method="dtkd", teachers=None, **cfg):
    student, spec, refs = make_setup()
    refs = refs if teachers is None else teachers
    d = build_distiller(DistillConfig(method=method, **cfg), student, spec, refs, tap_factory=ToyTap)
    d.set_epoch(0)
    return d


def prepared(method="dtkd", **cfg):
    d = build(method, **cfg)
    d.prepare([{"inputs": make_batch(4, seed=s)[0]} for s in range(3)])
    return d


# Registered methods tested end to end in their own file (tests/distill/test_distill_<name>.py).
OWN_FILE = ["cakd", "ofa", "pixelkd"]


def test_registry_has_every_method():
    assert DISTILLERS.names() == sorted(METHODS + OWN_FILE)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_forward_backward(method):
    d = prepared(method)
    d.train()
    inputs, target = make_batch()
    out = d(inputs, target)
    assert out.logits.shape == (4, NUM_CLASSES)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert "ce" in out.losses and all(not v.requires_grad for v in out.losses.values())
    out.loss.backward()
    assert all(p.grad is None for p in d.teachers.parameters())
    grads = [p.grad for p in d.trainable_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if method != "none":
        assert len(out.losses) > 1


def test_losses_named_per_method():
    inputs, target = make_batch()
    expected = {"none": set(), "dtkd": {"sr", "sd", "rkd"}}
    expected.update({m: {m} for m in ("kd", "dkd", "at", "mgd", "rkd")})
    for method, names in expected.items():
        out = prepared(method)(inputs, target)
        assert set(out.losses) == {"ce"} | names, method


@pytest.mark.parametrize("method", METHODS)
def test_saved_student_is_a_plain_student(method):
    d = prepared(method)
    plain = TinyCNN(NUM_CLASSES, width=6)
    assert d.student.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(d.student.state_dict())  # strict: no SDB, projection or generator
    assert not d.student._forward_hooks and not d.student.stage._forward_hooks  # taps removed
    inputs, _ = make_batch()
    d.eval()
    torch.testing.assert_close(plain.eval()(inputs["student"]), d.student(inputs["student"]))


def test_teachers_stay_frozen_in_eval_mode_and_bn_stats_never_move():
    d = prepared("dtkd")
    before = {k: v.clone() for k, v in d.teachers.state_dict().items()}
    d.train()
    assert d.student.training
    assert all(not m.training for m in d.teachers.modules())
    assert all(not p.requires_grad for p in d.teachers.parameters())
    teacher_ids = {id(p) for p in d.teachers.parameters()}
    assert not teacher_ids & {id(p) for p in d.trainable_parameters()}
    inputs, target = make_batch()
    d(inputs, target).loss.backward()
    after = d.teachers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sd_gradient_reaches_the_student_backbone_through_the_sdb():
    d = prepared("dtkd", use_sr=False, use_rkd=False, beta=1.0)
    d.train()
    inputs, target = make_batch()
    out = d(inputs, target)
    sd_term = out.loss - F.cross_entropy(out.logits.float(), target)  # = beta * L_SD, with graph
    stem_w = d.student.stem[0].weight
    (g_stem,) = torch.autograd.grad(sd_term, stem_w, retain_graph=True)
    assert g_stem.abs().sum() > 0
    sdb_params = list(d.sdd.sdb.parameters())
    g_sdb = torch.autograd.grad(sd_term, sdb_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_sdb)


def test_rkd_and_sr_gradients_reach_the_student():
    for flags in ({"use_sd": False, "use_rkd": False}, {"use_sd": False, "use_sr": False}):
        d = build("dtkd", **flags)
        inputs, target = make_batch()
        out = d(inputs, target)
        term = out.loss - F.cross_entropy(out.logits.float(), target)
        (g,) = torch.autograd.grad(term, d.student.stem[0].weight)
        assert g.abs().sum() > 0, flags


def test_dtkd_needs_prepare_before_sd():
    d = build("dtkd")
    assert d.needs_prepare
    inputs, target = make_batch()
    with pytest.raises(RuntimeError, match="prepare"):
        d(inputs, target)
    stats = d.prepare([{"inputs": make_batch(4, seed=s)[0], "label": 0} for s in range(5)], max_batches=2)
    assert stats["phi/batches"] == 2.0 and -1.0 <= stats["phi/r2"] <= 1.0
    assert not d.needs_prepare
    assert not build("dtkd", use_sd=False).needs_prepare


def test_cached_teacher_outputs_give_the_same_losses():
    d = prepared("dtkd").eval()
    inputs, target = make_batch()
    live = d(inputs, target)
    cache = d.teacher_forward(inputs)
    assert set(cache) == {"vit", "cnn"}
    assert cache["vit"]["features"].shape == (4, 12, 4, 6, 6) and cache["cnn"]["logits"].shape == (4, NUM_CLASSES)
    cached = d({"student": inputs["student"]}, target, teacher_outputs=cache)
    for k in live.losses:
        torch.testing.assert_close(cached.losses[k], live.losses[k])
    # Teachers known only through their cache (no model) work too.
    student, spec, refs = make_setup()
    refs = [TeacherRef(r.name, None, r.spec, r.role) for r in refs]
    d2 = build_distiller(DistillConfig(method="kd"), student, spec, refs, tap_factory=ToyTap)
    assert d2({"student": inputs["student"]}, target, teacher_outputs=cache).losses["kd"] > 0
    with pytest.raises(RuntimeError, match="no model"):
        d2({"student": inputs["student"]}, target)


def test_any_number_of_teachers_for_sr():
    student, spec, refs = make_setup()
    extra = TeacherRef("cnn2", TinyCNN(NUM_CLASSES, width=4), cnn_spec("tiny_cnn_s", 4), "cnn")
    sr_only = DistillConfig(method="dtkd", use_sd=False, use_rkd=False)
    d = build_distiller(sr_only, student, spec, refs + [extra], tap_factory=ToyTap)
    inputs, target = make_batch()
    inputs["cnn2"] = inputs["cnn"]
    d.train()(inputs, target).loss.backward()
    diag = d.epoch_diagnostics()
    assert {"datw/weight_mean/vit", "datw/weight_mean/cnn", "datw/weight_mean/cnn2"} <= set(diag["scalars"])
    one = build_distiller(sr_only, TinyCNN(NUM_CLASSES, 6), spec, refs[1:], tap_factory=ToyTap)
    assert torch.isfinite(one(inputs, target).loss)


def test_epoch_diagnostics_report_and_reset():
    d = prepared("dtkd").train()
    for s in range(2):
        inputs, target = make_batch(seed=s)
        d(inputs, target)
    diag = d.epoch_diagnostics()
    sc = diag["scalars"]
    assert sc["datw/n_samples"] == 8
    assert sc["datw/weight_mean/vit"] + sc["datw/weight_mean/cnn"] == pytest.approx(1.0, abs=1e-5)
    assert sc["datw/preferred/vit"] + sc["datw/preferred/cnn"] == pytest.approx(1.0)
    assert 0.0 <= sc["sd/mask_fraction"] <= 1.0
    for key in ("weight", "confidence", "discrepancy"):
        h = diag["histograms"][f"datw/{key}/vit"]
        assert len(h["edges"]) == len(h["counts"]) + 1 and sum(h["counts"]) == 8
    assert d.epoch_diagnostics() == {"scalars": {}, "histograms": {}}
    d.eval()(*make_batch())  # evaluation forwards are not counted
    assert d.epoch_diagnostics()["scalars"] == {}


def test_dkd_warmup_follows_set_epoch():
    d = build("dkd", dkd_warmup_epochs=4)
    inputs, target = make_batch()
    d.set_epoch(0)
    out = d(inputs, target)
    assert out.loss.item() == pytest.approx(out.losses["ce"].item() + 0.25 * out.losses["dkd"].item(), rel=1e-5)
    d.set_epoch(10)
    out = d(inputs, target)
    assert out.loss.item() == pytest.approx(out.losses["ce"].item() + out.losses["dkd"].item(), rel=1e-5)


def test_dkd_warns_once_without_set_epoch():
    student, spec, refs = make_setup()
    d = build_distiller(DistillConfig(method="dkd"), student, spec, refs, tap_factory=ToyTap).train()
    with pytest.warns(UserWarning, match="set_epoch"):
        d(*make_batch())
    assert d.dkd.warmup_factor(None) == 1.0


def test_total_is_ce_plus_weighted_terms():
    d = prepared("dtkd", alpha=0.5, beta=2.0, gamma=3.0)
    out = d(*make_batch())
    l = {k: v.item() for k, v in out.losses.items()}
    assert out.loss.item() == pytest.approx(l["ce"] + 0.5 * l["sr"] + 2.0 * l["sd"] + 3.0 * l["rkd"], rel=1e-5)


@pytest.mark.parametrize("weighting", ["uniform", "confidence", "discrepancy", "datw"])
@pytest.mark.parametrize("sdb", ["nl", "se", "nl+se"])
def test_ablation_configs_run(weighting, sdb):
    d = prepared("dtkd", weighting=weighting, sdb=sdb)
    assert torch.isfinite(d(*make_batch()).loss)


def test_pca_phi_and_batch_of_one():
    d = prepared("dtkd", phi_vit="pca", phi_dim=4)
    assert d.sdd.sdb.head.out_channels == 4
    inputs, target = make_batch(1)
    out = d.train()(inputs, target)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.losses["rkd"] == 0.0


def test_training_state_round_trip_keeps_phi_and_heads():
    d = prepared("dtkd")
    state = d.training_state_dict()
    assert not any(k.startswith("teachers.") for k in state)
    assert "sdd.phi.cnn_weight" in state and any(k.startswith("sdd.sdb.") for k in state)
    fresh = build("dtkd")
    assert fresh.needs_prepare
    fresh.load_training_state_dict(state)
    assert not fresh.needs_prepare
    torch.testing.assert_close(fresh.sdd.phi.cnn_weight, d.sdd.phi.cnn_weight)


def test_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        DistillConfig(method="dtkd", alpah=1.0)
    with pytest.raises(ValidationError, match="unknown distillation method"):
        DistillConfig(method="fitnet")
    with pytest.raises(ValidationError, match="phi_dim"):
        DistillConfig(phi_vit="pca")
    with pytest.raises(ValidationError):
        DistillConfig(tau=0)
    assert build_distiller({"method": "none"}, TinyCNN(), cnn_spec("s", 8), []).name == "none"


def test_missing_roles_and_views_are_named():
    student, spec, refs = make_setup()
    with pytest.raises(ValueError, match="role 'vit'"):
        build_distiller(DistillConfig(method="kd"), student, spec, refs[1:], tap_factory=ToyTap)
    with pytest.raises(ValueError, match="role 'cnn'"):
        build_distiller(DistillConfig(method="dtkd"), student, spec, refs[:1], tap_factory=ToyTap)
    d = build("kd", baseline_teacher="cnn")
    inputs, target = make_batch()
    del inputs["cnn"]
    with pytest.raises(KeyError, match="cnn"):
        d(inputs, target)
    bad = cnn_spec("tiny_cnn", 7)  # feature_dim disagrees with the tapped map
    with pytest.raises(ValueError, match="feature_dim"):
        d = build_distiller(DistillConfig(method="at"), TinyCNN(NUM_CLASSES, 6), bad, refs, tap_factory=ToyTap)
        d(*make_batch())


def test_bf16_autocast_forward_is_finite():
    d = prepared("dtkd").train()
    inputs, target = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(inputs, target)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.losses.values())
