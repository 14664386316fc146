"""MoViNet-A2 (base) and movinet_tiny: parameter count from the layer table by hand, FLOPs against
the paper's Table 8, the block's behaviour, the feature tap, weights, and the tiny model learning
and distilling through dtkd's Trainer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dtkd import distill, models
from dtkd.eval.complexity import count_flops, count_params
from dtkd.models import FeatureTap, load_weights
from dtkd.models.movinet import A2, K13, K15, K33, K53, S11, S12, Arch, MoViNet, Stage, make_divisible
from test_models_forward import _separable_batch  # colour-and-motion clips any working model learns

# The released MoViNet-A0 / A1 (TF model garden BLOCK_SPECS), to check the block against the
# MoViNet paper's own figures where paper and release agree.
A0 = Arch(8, (
    Stage(8, (24,), (K15,), (S12,)),
    Stage(32, (80, 80, 80), (K33,) * 3, (S12, S11, S11)),
    Stage(56, (184, 112, 184), (K53, K33, K33), (S12, S11, S11)),
    Stage(56, (184,) * 4, (K53, K33, K33, K33), (S11,) * 4),
    Stage(104, (384, 280, 280, 344), (K53, K15, K15, K15), (S12, S11, S11, S11)),
), 480, 2048)
A1 = Arch(16, (
    Stage(16, (40, 40), (K15, K33), (S12, S11)),
    Stage(40, (96, 120, 96, 96), (K33,) * 4, (S12,) + (S11,) * 3),
    Stage(64, (216, 128, 216, 168, 216), (K53,) + (K33,) * 4, (S12,) + (S11,) * 4),
    Stage(64, (216, 216, 216, 128, 128, 216), (K53, K33, K33, K33, K15, K33), (S11,) * 6),
    Stage(136, (456, 360, 360, 360, 456, 456, 544), (K53, K15, K15, K15, K15, K33, K13), (S12,) + (S11,) * 6),
), 600, 2048)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def hand_count(arch: Arch, num_classes: int) -> int:
    """Parameters from the layer table: convs without bias, BN scale + shift, SE convs with bias,
    one ReZero scalar per block, dense9 and the classifier with bias."""
    bn = 2
    total = 3 * arch.stem * 9 + bn * arch.stem  # conv1 1x3x3
    c_in = arch.stem
    for stage in arch.stages:
        for e, (kt, kh, kw), stride in zip(stage.expand, stage.kernels, stage.strides):
            h = make_divisible(e / 4)
            total += c_in * e + bn * e  # expansion
            total += e * kt * kh * kw + bn * e  # depthwise
            total += (e * h + h) + (h * e + e)  # squeeze-excitation
            total += e * stage.filters + bn * stage.filters  # projection
            total += 1  # ReZero
            if c_in != stage.filters or stride != S11:
                total += c_in * stage.filters + bn * stage.filters  # skip projection
            c_in = stage.filters
    total += c_in * arch.project + bn * arch.project  # conv7
    total += arch.project * arch.head + arch.head  # dense9
    return total + arch.head * num_classes + num_classes  # dense10


def test_se_width_is_mobilenet_rounding_of_a_quarter():
    # 40/4 = 10 rounds to 8, below 90 % of 10, so 16; 120/4 = 30 -> 32; 96/4 = 24; 576/4 = 144.
    assert [make_divisible(e / 4) for e in (40, 120, 96, 576, 64)] == [16, 32, 24, 144, 16]


@pytest.mark.parametrize("num_classes, expected", [(600, 5_249_562), (400, 4_839_762), (51, 4_124_661)])
def test_a2_parameter_count_is_the_layer_table(num_classes, expected):
    model = models.build("movinet_a2", num_classes)
    assert count_params(model) == hand_count(A2, num_classes) == expected


def test_a2_parameters_against_the_published_figures():
    """Published: 4.8 M (MoViNet paper, Kinetics-600 head; repeated as 4.80 in the dtkd paper's
    Table 8). The released A2 built here has 5.25 M at 600 classes: +9.4 %, outside 2 %. The
    architecture is the released one (it gives Table 8's FLOPs exactly, below); the paper's own
    A2 table differs from the release. Pinned so a change in either direction is noticed."""
    measured = count_params(models.build("movinet_a2", 600)) / 1e6
    assert measured / 4.8 - 1 == pytest.approx(0.0937, abs=0.001)
    # At dtkd's 400-class reference head the build is within 1 % of 4.80 (the registry test's
    # reference entry) -- a coincidence of head size, which the entry's note states.
    reference = models.get_spec("movinet_a2").published[0]
    assert "600-class" in reference.note
    assert count_params(models.build("movinet_a2", 400)) / 1e6 == pytest.approx(reference.params_m, rel=0.01)


@pytest.mark.parametrize("arch, published_m", [(A0, 3.1), (A1, 4.6)])
def test_the_same_blocks_reproduce_the_published_a0_and_a1(arch, published_m):
    """Where the MoViNet paper and the release agree (A0, A1), this code lands within 2 % of the
    paper's parameter counts at 600 classes: the block is right; A2's gap is the configuration."""
    assert count_params(MoViNet(arch, 600, dropout=0.0)) / 1e6 == pytest.approx(published_m, rel=0.02)


def test_a2_flops_at_16x224_are_the_paper_table_8_figure():
    # fvcore at 16x224^2 (conv + BN + linear): 3.850 G; Table 8 says 3.85. The issue asks 10 %.
    spec = models.get_spec("movinet_a2")
    table8 = next(p for p in spec.published if p.source == "paper Table 8")
    gflops = count_flops(models.build("movinet_a2", 51), (3, table8.frames, table8.crop_size, table8.crop_size))
    assert gflops == pytest.approx(table8.gflops, rel=0.01)
    assert spec.input_shape == (3, 16, 224, 224) and spec.published_gflops == 3.85


@pytest.mark.slow
def test_a2_flops_at_50x224_against_the_movinet_paper():
    """The MoViNet paper's 10.3 G (50x224^2, its A2): the released A2's convolutions are 11.56 G
    (+12 %), and fvcore adds 0.47 G of batch-norm: 12.02 G. Pinned, not matched."""
    assert count_flops(models.build("movinet_a2", 600), (3, 50, 224, 224)) == pytest.approx(12.02, rel=0.01)


def _forward(name, shape, num_classes=7):
    spec = models.get_spec(name, frames=shape[2], crop_size=shape[3])
    model = models.build(name, num_classes).eval()
    with FeatureTap(model, spec) as tap, torch.no_grad():
        logits = model(torch.randn(shape))
        return spec, logits, tap.features


@pytest.mark.parametrize("name, shape, grid", [
    ("movinet_tiny", (2, 3, 8, 64, 64), (8, 2, 2)),  # no temporal stride; 64 / 32 = 2
    ("movinet_a2", (2, 3, 4, 64, 64), (4, 2, 2)),
    ("movinet_tiny", (1, 3, 5, 96, 80), (5, 3, 3)),  # 96 -> 48, 24, 12, 6, 3; 80 -> 40, 20, 10, 5, 3
    ("movinet_tiny", (1, 3, 4, 32, 32), (4, 1, 1)),  # 2x2 maps before the last stride still pool
])
def test_forward_shapes_and_tap(name, shape, grid):
    spec, logits, features = _forward(name, shape)
    assert logits.shape == (shape[0], 7) and torch.isfinite(logits).all()
    assert features.shape == (shape[0], spec.feature_dim, *grid)
    assert spec.feature_dim == {"movinet_tiny": 160, "movinet_a2": 640}[name]


def test_pooled_tap_is_what_the_classifier_head_sees():
    model = models.build("movinet_tiny", 5).eval()
    spec = models.get_spec("movinet_tiny")
    seen = {}
    handle = model.dense9.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with FeatureTap(model, spec) as tap, torch.no_grad():
        model(torch.randn(2, 3, 8, 64, 64))
        torch.testing.assert_close(tap.pooled(), seen["x"])
    handle.remove()


def test_blocks_start_as_their_shortcut_and_project_only_when_shape_changes():
    model = models.build("movinet_a2", 5).eval()
    first, same = model.blocks[1][0], model.blocks[1][1]  # 16 -> 40 stride 2; 40 -> 40
    assert isinstance(same.skip, nn.Identity) and not isinstance(first.skip, nn.Identity)
    x = torch.randn(1, 2, 3, 5, 4)
    pooled = first.skip.pool(x)
    assert pooled.shape == (1, 2, 3, 3, 2)
    # Corner: the mean of the 2x2 in-image window (padding not counted); centre: the full 3x3.
    torch.testing.assert_close(pooled[..., 0, 0], x[..., :2, :2].mean((-2, -1)))
    torch.testing.assert_close(pooled[..., 1, 1], x[..., 1:4, 1:4].mean((-2, -1)))
    assert isinstance(model.blocks[3][0].skip, nn.Identity)  # b5 opens 72 -> 72 without stride
    x = torch.randn(1, 16, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[0][1](x), x)  # ReZero 0: identity block = identity
        assert first(x).shape == (1, 40, 3, 4, 4)
        torch.testing.assert_close(first(x), first.skip(x))
        first.rezero.fill_(1.0)
        assert not torch.allclose(first(x), first.skip(x))  # the branch counts once trained


def test_depthwise_convs_and_kernels_follow_the_a2_table():
    model = models.build("movinet_a2", 5)
    convs = [blk.feature[0] for stage in model.blocks for blk in stage]
    assert len(convs) == sum(len(s.expand) for s in A2.stages) == 26
    assert all(c.groups == c.in_channels == c.out_channels for c in convs)
    assert [c.kernel_size for c in convs[:3]] == [(1, 5, 5), (3, 3, 3), (3, 3, 3)]
    assert convs[-1].kernel_size == (1, 3, 3) and convs[-1].out_channels == 576
    assert [c.stride for c in convs if c.stride != (1, 1, 1)] == [(1, 2, 2)] * 4  # b2, b3, b4, b6


def test_dropout_and_stochastic_depth_overrides():
    model = models.build("movinet_tiny", 5, dropout=0.0, stochastic_depth_prob=0.3)
    assert model.dense10.p == 0.0 and models.build("movinet_a2", 5).dense10.p == 0.5
    rates = [blk.drop_path.p for stage in model.blocks for blk in stage]
    assert rates[0] == 0.0 and rates == sorted(rates) and max(rates) < 0.3
    with pytest.raises(ValueError, match="stochastic_depth_prob"):
        models.build("movinet_tiny", 5, stochastic_depth_prob=1.0)
    assert models.get_spec("movinet_a2").weights_url is None
    with pytest.raises(ValueError, match="no official weights URL"):
        models.build("movinet_a2", 5, pretrained="official")


def test_weights_round_trip_through_a_file_and_a_new_head(tmp_path):
    src = models.build("movinet_tiny", 600)
    for p in src.parameters():  # ReZero scalars are 0 at init: make every tensor distinctive
        p.data.normal_()
    torch.save({"model_state": src.state_dict()}, tmp_path / "k600.pt")
    same = models.build("movinet_tiny", 600, pretrained=str(tmp_path / "k600.pt"))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(same.state_dict()[k], v, rtol=0, atol=0)
    tuned = models.build("movinet_tiny", 51)
    report = load_weights(tuned, tmp_path / "k600.pt", strict=True, head=models.get_spec("movinet_tiny").head)
    assert report.head_skipped and set(report.skipped) == {"dense10.weight", "dense10.bias"}
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(tuned.conv7[0].weight, src.conv7[0].weight)


def test_tiny_is_cpu_sized():
    spec = models.get_spec("movinet_tiny")
    assert spec.scale == "tiny" and spec.input_shape == (3, 8, 64, 64)
    model = models.build("movinet_tiny", 6)
    assert count_params(model) == hand_count(models.movinet.TINY, 6) < 200_000
    assert count_flops(model, spec.input_shape) < 0.05  # GFLOPs per 8x64^2 clip (0.014)


def test_tiny_learns():
    x, y = _separable_batch()
    model = models.build("movinet_tiny", 3).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert min(losses[-5:]) < 0.25 * losses[0], losses


# ---- the tiny MoViNet as a distilled student ------------------------------------------------------

N = 5
pytestmark = [pytest.mark.filterwarnings("ignore:phi_CNN fitted on")]


def _clips(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 64, 64, generator=g)


def _distiller(method):
    # The paper's setting for MoViNet-A2: the CNN teacher shares the student's architecture,
    # the ViT teacher is an MViTv2 (here the tiny ones).
    student = models.build("movinet_tiny", N)
    refs = [
        distill.TeacherRef("vit", models.build("mvit_tiny", N), models.get_spec("mvit_tiny"), "vit"),
        distill.TeacherRef("cnn", models.build("movinet_tiny", N), models.get_spec("movinet_tiny"), "cnn"),
    ]
    d = distill.build_distiller(distill.DistillConfig(method=method), student, models.get_spec("movinet_tiny"), refs)
    d.set_epoch(0)
    d.prepare([{"inputs": {k: _clips(3, s) for k in ("student", "vit", "cnn")}} for s in (1, 2)])
    return d


@pytest.mark.parametrize("method", ["at", "mgd", "dtkd"])
def test_feature_methods_train_the_tiny_movinet(method):
    d = _distiller(method).train()
    x = {k: _clips(3, 3) for k in ("student", "vit", "cnn")}
    out = d(x, torch.tensor([0, 1, 4]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in d.teachers.parameters())
    assert d.student.conv1[0].weight.grad.abs().sum() > 0  # the feature losses reach the stem


class _Clips(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = _clips(n, 4)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": {k: self.x[i] for k in ("student", "vit", "cnn")}, "label": i % N, "index": i}


def test_a_short_dtkd_run_through_the_trainer(tmp_path):
    from dtkd.engine import History, TrainConfig, Trainer

    d = _distiller("dtkd")
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    result = Trainer(d, TrainConfig(epochs=2, batch_size=3), progress=False, checkpoint_dir=tmp_path,
                     callbacks=[History()]).fit(_Clips(6))
    assert len(result.history) == 2 and result.history[-1]["nonfinite_skipped"] == 0
    losses = {k: v for k, v in result.history[-1].items() if k.startswith("train_loss")}
    assert "train_loss/ce" in losses and len(losses) > 1, losses  # CE plus the distillation terms
    assert all(torch.isfinite(torch.tensor(float(v))) for v in losses.values()), losses
    after = d.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the student was trained
