"""OFA-KD (method ``ofa``): the loss against hand-computed values, its invariants, the exits, the
config and method refusals, and a short run on the real tiny models (x3d_tiny student)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from distill_helpers import TinyClips, TinyCNN, ToyTap, cnn_spec, make_setup, tiny_zoo, zoo_distiller
from dtkd.distill import DISTILLERS, DistillConfig, build_distiller
from dtkd.distill.losses.ofa import OFALoss, ofa_class_weights, ofa_loss

pytestmark = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")  # pytorchvideo

# Two classes: p_s = softmax([0, ln 3]) = [1/4, 3/4], p_t = softmax([ln 4, 0]) = [4/5, 1/5].
ZS2 = torch.tensor([[0.0, math.log(3.0)]])
ZT2 = torch.tensor([[math.log(4.0), 0.0]])
Y0 = torch.tensor([0])


# ----- the loss, by hand ---------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 1.0, 2.0, 0.5])
def test_paper_loss_by_hand_two_classes(eps):
    # -(1 + p_t[y])^eps log p_s[y] - p_t[other] log p_s[other], y = 0.
    expected = -((1 + 0.8) ** eps) * math.log(0.25) - 0.2 * math.log(0.75)
    assert ofa_loss(ZS2, ZT2, Y0, eps=eps).item() == pytest.approx(expected, rel=1e-6)


def test_paper_loss_by_hand_three_classes_batch_mean():
    # Row 1: p_s = 1/3 each, p_t = [1/6, 2/6, 3/6], y = 2, eps = 1.5.
    # Row 2: p_s = softmax([ln 2, 0, 0]) = [1/2, 1/4, 1/4], p_t = [1/3]*3, y = 1.
    zs = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    zt = torch.tensor([[0.0, math.log(2.0), math.log(3.0)], [1.0, 1.0, 1.0]])
    y = torch.tensor([2, 1])
    e = 1.5
    row1 = -(1.5**e) * math.log(1 / 3) - (1 / 6) * math.log(1 / 3) - (2 / 6) * math.log(1 / 3)
    row2 = -((4 / 3) ** e) * math.log(1 / 4) - (1 / 3) * math.log(1 / 2) - (1 / 3) * math.log(1 / 4)
    assert ofa_loss(zs, zt, y, eps=e).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_code_variant_by_hand():
    # Released-code weights: (1 + p_t[y])^eps - 1 on y, p_t^eps elsewhere.
    expected = -((1.8**2) - 1) * math.log(0.25) - (0.2**2) * math.log(0.75)
    assert ofa_loss(ZS2, ZT2, Y0, eps=2.0, variant="code").item() == pytest.approx(expected, rel=1e-6)


def test_temperature_divides_both_logits_without_tau_squared():
    expected = -1.8 * math.log(0.25) - 0.2 * math.log(0.75)
    assert ofa_loss(2 * ZS2, 2 * ZT2, Y0, eps=1.0, tau=2.0).item() == pytest.approx(expected, rel=1e-6)


# ----- invariants ------------------------------------------------------------------------------
def _random(b=4, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, generator=g), 3 * torch.randn(b, n, generator=g), torch.randint(0, n, (b,), generator=g)


def test_eps_zero_is_cross_entropy_against_the_teacher_with_the_target_set_to_one():
    zs, zt, y = _random()
    q = F.softmax(zt, -1)
    q[torch.arange(len(y)), y] = 1.0  # target term weight (1 + p)^0 = 1, the rest the teacher's
    expected = -(q * F.log_softmax(zs, -1)).sum(-1).mean()
    torch.testing.assert_close(ofa_loss(zs, zt, y, eps=0.0), expected)


def test_code_variant_at_eps_one_is_cross_entropy_against_the_teacher():
    zs, zt, y = _random(seed=1)
    expected = -(F.softmax(zt, -1) * F.log_softmax(zs, -1)).sum(-1).mean()
    torch.testing.assert_close(ofa_loss(zs, zt, y, eps=1.0, variant="code"), expected)


def test_target_weight_grows_with_eps_and_teacher_confidence():
    p = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    y = torch.tensor([0, 0])
    w1, w2 = ofa_class_weights(p, y, 1.0), ofa_class_weights(p, y, 2.0)
    assert torch.all(w2[:, 0] > w1[:, 0]) and w1[1, 0] > w1[0, 0]
    torch.testing.assert_close(w1[:, 1], p[:, 1])  # non-target weights are the teacher's probabilities


def test_teacher_gets_no_gradient_and_low_precision_computes_in_float32():
    zs, zt, y = _random(seed=2)
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    loss = ofa_loss(zs.bfloat16(), zt.bfloat16(), y, eps=1.5, tau=2.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert zt.grad is None and zs.grad is not None and zs.grad.abs().sum() > 0


def test_module_matches_function_and_bad_inputs_are_refused():
    zs, zt, y = _random(seed=3)
    torch.testing.assert_close(OFALoss(1.5, 2.0, "code")(zs, zt, y), ofa_loss(zs, zt, y, 1.5, 2.0, "code"))
    with pytest.raises(ValueError, match="target classes must be in"):
        ofa_loss(zs, zt, torch.tensor([0, 1, -1, 2]))
    with pytest.raises(ValueError, match="target must be"):
        ofa_loss(zs, zt, y[:2])
    with pytest.raises(ValueError, match="same shape"):
        ofa_loss(zs, zt[:, :3], y)
    with pytest.raises(ValueError, match="variant"):
        OFALoss(variant="both")
    with pytest.raises(ValueError, match="eps >= 0"):
        OFALoss(eps=-1.0)


# ----- registration and config -----------------------------------------------------------------
def test_ofa_is_registered_with_the_authors_defaults():
    assert "ofa" in DISTILLERS.names()
    c = DistillConfig(method="ofa")
    assert (c.ofa_eps, c.ofa_tau, c.ofa_weight, c.ofa_final_weight) == (1.0, 1.0, 1.0, 1.0)
    assert c.ofa_stages is None and c.ofa_variant == "paper"


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"transfer_set": True}, "method 'ofa' cannot use unlabelled clips"),
        ({"ofa_stages": []}, "ofa_stages: give non-empty module names"),
        ({"ofa_stages": ["blocks.1", " "]}, "ofa_stages: give non-empty module names"),
        ({"ofa_stages": ["blocks.1", "blocks.1"]}, "module names must be unique"),
        ({"ofa_eps": -0.5}, "greater than or equal to 0"),
        ({"ofa_tau": 0.0}, "greater than 0"),
        ({"ofa_variant": "released"}, "'paper' or 'code'"),
    ],
)
def test_bad_configs_are_refused_clearly(cfg, message):
    with pytest.raises(ValidationError, match=message):
        DistillConfig(method="ofa", **cfg)


def test_generic_cnn_student_needs_explicit_stages_and_real_module_names():
    student, _, refs = make_setup()
    spec = SimpleNamespace(**vars(cnn_spec("tiny_cnn", 6)), input_shape=(3, 4, 16, 16))
    with pytest.raises(ValueError, match="no default exit stages for student 'tiny_cnn'.*ofa_stages"):
        build_distiller(DistillConfig(method="ofa"), student, spec, refs, tap_factory=ToyTap)
    with pytest.raises(ValueError, match="no module 'layer9'"):
        build_distiller(DistillConfig(method="ofa", ofa_stages=["layer9"]), student, spec, refs, tap_factory=ToyTap)
    no_shape = cnn_spec("tiny_cnn", 6)
    with pytest.raises(ValueError, match="input_shape"):
        build_distiller(DistillConfig(method="ofa", ofa_stages=["stem"]), student, no_shape, refs, tap_factory=ToyTap)


def test_generic_cnn_student_with_explicit_stage_trains_its_exit():
    student, _, refs = make_setup()
    spec = SimpleNamespace(**vars(cnn_spec("tiny_cnn", 6)), input_shape=(3, 4, 16, 16))
    d = build_distiller(DistillConfig(method="ofa", ofa_stages=["stem"]), student, spec, refs, tap_factory=ToyTap)
    assert [e.n_down for e in d.exits] == [1]  # stem 16x16 -> stage 8x8: one stride-2 block
    g = torch.Generator().manual_seed(0)
    inputs = {"student": torch.randn(2, 3, 4, 16, 16, generator=g), "vit": torch.randn(2, 3, 8, 24, 24, generator=g)}
    out = d.train()(inputs, torch.tensor([0, 3]))
    out.loss.backward()
    assert set(out.losses) == {"ce", "ofa", "ofa_exits"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.exits[0].fc.parameters())
    assert d.student.state_dict().keys() == TinyCNN(5, width=6).state_dict().keys()


# ----- the real tiny models --------------------------------------------------------------------
models = pytest.importorskip("dtkd.models")
N = 5


@pytest.fixture(scope="module")
def zoo():
    student, spec, refs, (batch,) = tiny_zoo(N, 1)
    return student, spec, refs, batch


def make(zoo, **cfg):
    return zoo_distiller(zoo, "ofa", N, **cfg)


def test_x3d_student_default_exits_and_training_only_parts(zoo):
    d = make(zoo)
    assert d.stage_names == ["blocks.1", "blocks.2", "blocks.3"]
    # x3d_tiny at 64^2: stages 16^2, 8^2, 4^2 onto the 2^2 last map; width max(216, mvit_tiny's 128).
    assert [e.n_down for e in d.exits] == [3, 2, 1]
    assert all(e.fc.in_features == 216 and e.fc.out_features == N for e in d.exits)
    plain = models.build("x3d_tiny", N)
    assert d.student.state_dict().keys() == plain.state_dict().keys()  # exits are not in the student
    assert not any("exit" in k for k in d.student.state_dict())
    state = d.training_state_dict()
    assert any(k.startswith("exits.") for k in state) and not any(k.startswith("teachers.") for k in state)
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in trainable for p in d.exits.parameters())
    assert d.active_teachers == ["vit"] and not d.feature_teachers and not d.needs_student_features


def test_x3d_forward_backward_reaches_exits_and_student_and_leaves_no_hook(zoo):
    d = make(zoo, ofa_final_weight=0.0).train()  # every teacher term comes from the exits
    x, y = zoo[3], torch.tensor([0, 1, 4])
    out = d(x, y)
    assert torch.isfinite(out.loss) and set(out.losses) == {"ce", "ofa", "ofa_exits"}
    exits_term = out.loss - F.cross_entropy(out.logits.float(), y)
    stem = next(p for n, p in d.student.named_parameters() if p.dim() == 5)
    (g,) = torch.autograd.grad(exits_term, stem, retain_graph=True)
    assert g.abs().sum() > 0
    out.loss.backward()
    assert all(p.grad is not None for p in d.exits.parameters())
    assert all(p.grad is None for p in d.teachers.parameters())
    assert all(not m._forward_hooks for m in d.student.modules())
    diag = d.epoch_diagnostics()["scalars"]
    assert set(diag) == {"ofa/exit/blocks.1", "ofa/exit/blocks.2", "ofa/exit/blocks.3"}
    assert sum(diag.values()) == pytest.approx(float(out.losses["ofa_exits"]), rel=1e-5)
    assert d.epoch_diagnostics()["scalars"] == {}  # reset


def test_x3d_cached_teacher_matches_live_and_cnn_teacher_works(zoo):
    d = make(zoo, baseline_teacher="cnn").eval()
    x, y = zoo[3], torch.tensor([2, 0, 3])
    cache = d.teacher_forward(x)
    assert set(cache) == {"cnn"}  # only the chosen teacher runs
    live = d(x, y)
    cached = d({"student": x["student"]}, y, teacher_outputs=cache)
    torch.testing.assert_close(cached.losses["ofa_exits"], live.losses["ofa_exits"])
    torch.testing.assert_close(cached.loss, live.loss)


def test_vit_student_is_refused_clearly(zoo):
    _, _, refs, _ = zoo
    vit_student = models.build("mvit_tiny", N)
    with pytest.raises(ValueError, match="ofa: student 'mvit_tiny' is a ViT"):
        build_distiller(DistillConfig(method="ofa"), vit_student, models.get_spec("mvit_tiny"), refs)


def test_one_epoch_of_ofa_with_the_trainer(zoo, tmp_path):
    from dtkd.engine import History, Trainer, TrainConfig
    from dtkd.engine.sampling import SeededViews

    d = make(zoo)
    before = {k: v.clone() for k, v in d.exits.state_dict().items()}
    result = Trainer(d, TrainConfig(epochs=1, batch_size=3), progress=False, checkpoint_dir=tmp_path,
                     callbacks=[History()]).fit(SeededViews(TinyClips(6, N, ("student", "vit"))))
    terms = {k for k in result.history[0] if k.startswith("train_loss/")}
    assert {"train_loss/ce", "train_loss/ofa", "train_loss/ofa_exits"} <= terms
    assert all(math.isfinite(result.history[0][k]) for k in terms)
    assert any(not torch.equal(before[k], v) for k, v in d.exits.state_dict().items())  # the exits learned
    assert d.student.state_dict().keys() == models.build("x3d_tiny", N).state_dict().keys()
