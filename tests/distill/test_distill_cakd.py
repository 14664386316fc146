"""CAKD (method ``cakd``): the losses against hand-computed values, their invariants (zero at the
target, gradients, mismatched grids), the config and method refusals, and a one-epoch run on the
real tiny models (x3d_tiny student, mvit_tiny / x3d_tiny_m teachers)."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from distill_helpers import NUM_CLASSES, TinyCNN, ToyTap, make_batch, make_setup
from dtkd.distill import DISTILLERS, DistillConfig, build_distiller
from dtkd.distill.losses.cakd import (
    CAKDLoss,
    attention_relations,
    cakd_loss,
    gl_loss,
    gl_project,
    group_index,
    pca_loss,
    teacher_qkv,
)

E = math.e
A = 1 / (1 + E)  # softmax([0, 1])[0]
NONE = torch.zeros(1, 3, dtype=torch.bool)


def tok(rows) -> torch.Tensor:
    """(1, N, d) tokens from a list of N rows."""
    return torch.tensor([rows], dtype=torch.float32)


# ----- the losses, by hand ---------------------------------------------------------------------
def test_attention_relations_by_hand_d1():
    # q k^T = [[0, 1], [0, 0]] -> rows softmax([0, 1]) and [1/2, 1/2]; v v^T = [[1, 2], [2, 4]].
    attn, rel = attention_relations(tok([[1.0], [0.0]]), tok([[0.0], [1.0]]), tok([[1.0], [2.0]]))
    torch.testing.assert_close(attn, torch.tensor([[[A, 1 - A], [0.5, 0.5]]]))
    torch.testing.assert_close(rel, torch.tensor([[[1.0, 2.0], [2.0, 4.0]]]))


def test_attention_relations_divide_by_sqrt_d():
    # d = 4, sqrt(d) = 2: q k^T = [[2, 2], [0, 2]] -> [[1, 1], [0, 1]]; v v^T = [[4, 2], [2, 4]] -> / 2.
    q = tok([[2.0, 0, 0, 0], [0, 2.0, 0, 0]])
    k = tok([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0]])
    v = tok([[1.0, 1, 1, 1], [2.0, 0, 0, 0]])
    attn, rel = attention_relations(q, k, v)
    torch.testing.assert_close(attn, torch.tensor([[[0.5, 0.5], [A, 1 - A]]]))
    torch.testing.assert_close(rel, torch.tensor([[[2.0, 1.0], [1.0, 2.0]]]))


# Student Q = [[1], [0]], K = [[0], [1]], V = [[1], [2]]; teacher Q = K = V = [[1], [1]]:
# A_T = all 1/2, R_T = all 1; A_S = [[a, 1 - a], [1/2, 1/2]], R_S = [[1, 2], [2, 4]].
QS, KS, VS = tok([[1.0], [0.0]]), tok([[0.0], [1.0]]), tok([[1.0], [2.0]])
QT = tok([[1.0], [1.0]])
R_TERM = (0 + 1 + 1 + 9) / 4  # mean (R_S - R_T)^2 = mean [[0, 1], [1, 3]]^2


@pytest.mark.parametrize(
    "replace, expected",
    [
        ([False, False, False], 2 * (A - 0.5) ** 2 / 4 + R_TERM),
        ([True, False, False], 4 * (A - 0.5) ** 2 / 4 + R_TERM),  # Q_T: both rows softmax([0, 1])
        ([False, True, False], 0.0 + R_TERM),  # K_T: q k^T = [[1, 1], [0, 0]], both rows uniform
        ([False, False, True], 2 * (A - 0.5) ** 2 / 4 + 0.0),  # V_T: R_S = R_T
        ([True, True, True], 0.0),
    ],
)
def test_pca_loss_by_hand(replace, expected):
    value = pca_loss(QS, KS, VS, QT, QT, QT, replace=torch.tensor([replace]))
    assert value.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_pca_replacement_is_per_clip_and_the_mean_runs_over_the_batch():
    # Clip 0 keeps its own Q, K, V; clip 1 takes the teacher's V: its R term vanishes.
    two = lambda t: torch.cat([t, t])  # noqa: E731
    replace = torch.tensor([[False, False, False], [False, False, True]])
    value = pca_loss(two(QS), two(KS), two(VS), two(QT), two(QT), two(QT), replace=replace)
    a_term = 2 * (A - 0.5) ** 2 / 4
    assert value.item() == pytest.approx(((a_term + R_TERM) + (a_term + 0.0)) / 2, rel=1e-6)


def test_teacher_qkv_is_the_parameter_free_layer_norm_of_the_tokens():
    # Token (1, 3): mean 2, variance 1 -> (-1, 1); token (0, 4): mean 2, variance 4 -> (-1, 1).
    t = torch.tensor([1.0, 0.0, 3.0, 4.0]).reshape(1, 2, 2, 1, 1)  # (B, D=2, T=2, 1, 1)
    out = teacher_qkv(t)
    assert out.shape == (1, 2, 2)
    torch.testing.assert_close(out, torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]]), rtol=0, atol=1e-4)


def test_group_index_by_hand():
    assert group_index(4, 2).tolist() == [0, 0, 1, 1]
    assert group_index(5, 2).tolist() == [0, 0, 0, 1, 1]  # floor(i * 2 / 5)
    assert group_index(3, 4).tolist() == [0, 1, 2]  # shorter than the blocks: one location each
    assert group_index(7, 4).tolist() == [0, 0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        group_index(3, 0)


def test_gl_project_by_hand_along_width():
    # W = 4 in 2 blocks: x * 2 + 0.5 on the first two locations, x * -1 on the last two.
    feat = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 1, 4)
    weight = torch.tensor([2.0, -1.0]).reshape(2, 1, 1)
    bias = torch.tensor([0.5, 0.0]).reshape(2, 1)
    out = gl_project(feat, weight, bias, (1, 1, 2))
    torch.testing.assert_close(out, torch.tensor([2.5, 4.5, -3.0, -4.0]).reshape(1, 1, 1, 1, 4))


def test_gl_project_by_hand_along_time_mixes_channels():
    # C = 2 -> D = 1, T = 2 in 2 blocks: c0 + c1 at t = 0 (1 + 2), c0 - c1 at t = 1 (3 - 4).
    feat = torch.tensor([[1.0, 3.0], [2.0, 4.0]]).reshape(1, 2, 2, 1, 1)  # channel, time
    weight = torch.tensor([[1.0, 1.0], [1.0, -1.0]]).reshape(2, 2, 1)
    out = gl_project(feat, weight, None, (2, 1, 1))
    torch.testing.assert_close(out, torch.tensor([3.0, -1.0]).reshape(1, 1, 2, 1, 1))


def test_gl_loss_by_hand():
    p = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1, 1)
    t = torch.tensor([0.0, 4.0]).reshape(1, 2, 1, 1, 1)
    assert gl_loss(p, t).item() == pytest.approx((1 + 4) / 2)


def test_cakd_loss_pools_the_student_to_the_teacher_grid_by_hand():
    # Student 2x2 locations (1, 2, 3, 4) -> the teacher's single location: 2.5; GL: 2 * 2.5 = 5;
    # teacher 4: L_GL = 1.
    m = CAKDLoss(1, 1, groups=(1, 1, 1), use_pca=False)
    with torch.no_grad():
        m.gl.weight.fill_(2.0)
        m.gl.bias.zero_()
    student = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 2, 2)
    teacher = torch.full((1, 1, 1, 1, 1), 4.0)
    out = m(student, teacher)
    assert set(out) == {"gl"}
    assert out["gl"].item() == pytest.approx(1.0)
    assert cakd_loss(student, teacher, None, m.gl)["gl"].item() == pytest.approx(1.0)  # the pure function


# ----- invariants ------------------------------------------------------------------------------
def test_zero_when_the_projected_student_equals_the_teacher():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 2, 3, 3, generator=g)
    m = CAKDLoss(3, 3, groups=(2, 2, 2))
    with torch.no_grad():
        m.gl.weight.copy_(torch.eye(3).expand(8, 3, 3))
        m.gl.bias.zero_()
    out = m(feat, feat, replace=torch.ones(2, 3, dtype=torch.bool))  # PCA: all of Q, K, V the teacher's
    assert out["gl"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["pca"].item() == pytest.approx(0.0, abs=1e-12)
    q = torch.randn(2, 5, 4, generator=g)
    k = torch.randn(2, 5, 4, generator=g)
    v = torch.randn(2, 5, 4, generator=g)
    assert pca_loss(q, k, v, q, k, v, replace=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("grids", [((4, 8, 8), (2, 3, 3)), ((2, 2, 2), (4, 5, 5))])
def test_mismatched_grids_shapes_and_gradients(grids):
    s_grid, t_grid = grids
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 6, *s_grid, generator=g, requires_grad=True)
    teacher = torch.randn(2, 12, *t_grid, generator=g, requires_grad=True)
    m = CAKDLoss(6, 12, groups=(2, 2, 2)).train()
    q, k, v = m.pca(torch.randn(2, 6, *t_grid))
    assert q.shape == k.shape == v.shape == (2, math.prod(t_grid), 12)
    assert m.gl(torch.randn(2, 6, *t_grid)).shape == (2, 12, *t_grid)
    out = m(student, teacher, replace=torch.zeros(2, 3, dtype=torch.bool))
    assert set(out) == {"pca", "gl"} and all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    (out["pca"] + out["gl"]).backward()
    assert teacher.grad is None  # the teacher is a target
    assert student.grad is not None and student.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert (m.gl.weight.grad.flatten(1).abs().sum(-1) > 0).all()  # every block is used


def test_eval_mode_uses_the_students_own_qkv_and_training_replaces():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 4, 2, 3, 3, generator=g), torch.randn(2, 8, 2, 3, 3, generator=g)
    m = CAKDLoss(4, 8, replace_prob=1.0)
    assert m.train()(student, teacher)["pca"].item() == pytest.approx(0.0, abs=1e-12)
    first = m.eval()(student, teacher)["pca"]
    assert first.item() > 0
    assert m(student, teacher)["pca"].item() == first.item()


def test_projector_argument_checks():
    with pytest.raises(ValueError, match="three positive block counts"):
        CAKDLoss(4, 8, groups=(2, 0, 2))
    with pytest.raises(ValueError, match="odd"):
        CAKDLoss(4, 8, kernel_size=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CAKDLoss(4, 8, replace_prob=1.5)
    with pytest.raises(ValueError, match="at least one"):
        CAKDLoss(4, 8, use_pca=False, use_gl=False)
    with pytest.raises(ValueError, match="same shape|one shape"):
        pca_loss(QS, KS, VS, QT[:, :1], QT, QT, replace=NONE)


# ----- the method --------------------------------------------------------------------------------
def build(**cfg):
    student, spec, refs = make_setup()
    return build_distiller(DistillConfig(method="cakd", **cfg), student, spec, refs, tap_factory=ToyTap)


def test_registered_with_the_baseline_teacher_and_training_only_projectors():
    assert "cakd" in DISTILLERS
    d = build().train()
    assert d.teacher_name == "vit" and d.active_teachers == ["vit"] and d.feature_teachers == {"vit"}
    assert d.cakd.pca.q.in_channels == 6 and d.cakd.pca.q.out_channels == 12  # student 6 -> TinyViT 12
    assert d.cakd.gl.groups == (4, 4, 4) and d.cakd.gl.weight.shape == (64, 6, 12)
    inputs, target = make_batch()
    out = d(inputs, target)
    assert set(out.losses) == {"ce", "cakd_pca", "cakd_gl"}
    expected = out.losses["ce"] + out.losses["cakd_pca"] + out.losses["cakd_gl"]  # weights 1 and 1
    torch.testing.assert_close(out.loss.detach(), expected)
    out.loss.backward()
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in trainable for p in d.cakd.parameters())
    assert all(p.grad is not None for p in d.cakd.gl.parameters())
    assert all(p.grad is None for p in d.teachers.parameters())
    plain = TinyCNN(NUM_CLASSES, width=6)
    plain.load_state_dict(d.student.state_dict())  # strict: no projector in the student
    assert not any(k.startswith("cakd") for k in d.student.state_dict())
    assert any(k.startswith("cakd.") for k in d.training_state_dict())


def test_cnn_teacher_and_a_zero_weight_drop_what_is_not_used():
    d = build(baseline_teacher="cnn", cakd_gl_weight=0.0)
    assert d.teacher_name == "cnn" and d.cakd.gl is None and d.cakd.pca.q.out_channels == 10
    out = d(*make_batch())
    assert set(out.losses) == {"ce", "cakd_pca"}


def test_cached_teacher_outputs_give_the_same_losses_in_eval():
    d = build().eval()
    inputs, target = make_batch()
    cache = d.teacher_forward(inputs)
    live = d(inputs, target)
    cached = d({"student": inputs["student"]}, target, teacher_outputs=cache)
    for k in ("cakd_pca", "cakd_gl"):
        torch.testing.assert_close(cached.losses[k], live.losses[k])


def test_channels_last_and_bf16_autocast():
    # The trainer may move the distiller to channels_last_3d (every 4-D/5-D parameter) and run
    # under bf16 autocast: the projectors' weights must survive both, the losses stay float32.
    d = build().train().to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(*make_batch())
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for k, v in out.losses.items() if k != "ce")
    out.loss.backward()
    assert torch.isfinite(d.cakd.gl.weight.grad).all() and d.cakd.pca.v.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"cakd_replace_prob": 1.5}, "cakd_replace_prob"),
        ({"cakd_gl_groups": (0, 4, 4)}, "three positive block counts"),
        ({"cakd_gl_groups": (4, 4)}, "cakd_gl_groups"),
        ({"cakd_pca_weight": -1.0}, "cakd_pca_weight"),
        ({"cakd_kernel": 0}, "cakd_kernel"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(cfg, message):
    with pytest.raises(ValidationError, match=message):
        DistillConfig(method="cakd", **cfg)


def test_nothing_to_distil_and_a_missing_teacher_are_refused():
    with pytest.raises(ValueError, match="both 0"):
        build(cakd_pca_weight=0.0, cakd_gl_weight=0.0)
    student, spec, refs = make_setup()
    with pytest.raises(ValueError, match="role 'vit'"):
        build_distiller(DistillConfig(method="cakd"), student, spec, [refs[1]], tap_factory=ToyTap)
    with pytest.raises(ValueError, match="odd"):
        build(cakd_kernel=2)


def test_config_round_trips_groups_from_a_yaml_list():
    cfg = DistillConfig.model_validate({"method": "cakd", "cakd_gl_groups": [2, 4, 4]})
    assert cfg.cakd_gl_groups == (2, 4, 4)
    assert DistillConfig().cakd_gl_groups == (4, 4, 4) and DistillConfig().cakd_replace_prob == 0.5


# ----- one epoch on the real tiny models ---------------------------------------------------------
models = pytest.importorskip("dtkd.models")


class _Clips(torch.utils.data.Dataset):
    """Random 8x64x64 clips for every view, labels 0..4."""

    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 3, 8, 64, 64, generator=torch.Generator().manual_seed(3))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": {k: self.x[i] for k in ("student", "vit", "cnn")}, "label": i % 5, "index": i}


@pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")  # pytorchvideo
def test_one_epoch_on_the_tiny_models(tmp_path):
    from dtkd.distill import TeacherRef
    from dtkd.engine import History, TrainConfig, Trainer

    torch.manual_seed(0)
    refs = [
        TeacherRef("vit", models.build("mvit_tiny", 5), models.get_spec("mvit_tiny"), "vit"),
        TeacherRef("cnn", models.build("x3d_tiny_m", 5), models.get_spec("x3d_tiny_m"), "cnn"),
    ]
    student = models.build("x3d_tiny", 5)
    d = build_distiller(DistillConfig(method="cakd"), student, models.get_spec("x3d_tiny"), refs)
    # x3d_tiny's 216-channel 8x2x2 map is pooled/replicated onto mvit_tiny's 128-channel 4x4x4 tokens.
    assert d.cakd.pca.q.out_channels == 128 and d.cakd.gl.weight.shape == (64, 216, 128)
    gl_before = d.cakd.gl.weight.detach().clone()
    result = Trainer(d, TrainConfig(epochs=1, batch_size=3), progress=False, checkpoint_dir=tmp_path,
                     callbacks=[History()]).fit(_Clips(6))
    epoch = result.history[0]
    assert {"train_loss/ce", "train_loss/cakd_pca", "train_loss/cakd_gl"} <= set(epoch)
    assert all(math.isfinite(epoch[k]) for k in ("train_loss/cakd_pca", "train_loss/cakd_gl"))
    assert not torch.equal(gl_before, d.cakd.gl.weight.detach())  # the projectors train with the student
    plain = models.build("x3d_tiny", 5)
    assert d.student.state_dict().keys() == plain.state_dict().keys()
