"""count_params / count_flops against hand-computed figures."""
from __future__ import annotations

import pytest
from torch import nn

from dtkd import models
from dtkd.eval.complexity import count_flops, count_params


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, kernel_size=3, padding=1, bias=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3, 4)))


def test_count_params_counts_shared_tensors_once_and_can_skip_frozen():
    toy = Toy()
    assert count_params(toy) == 3 * 4 * 27 + 4 * 2 + 2
    toy.conv.weight.requires_grad_(False)
    assert count_params(toy, trainable_only=True) == 4 * 2 + 2
    shared = nn.Sequential(toy.fc, toy.fc)
    assert count_params(shared) == 10


def test_count_flops_is_multiply_adds_of_one_clip():
    toy = Toy().train()
    macs = 3 * 27 * 4 * (2 * 8 * 8) + 4 * 2  # conv output positions x kernel volume x c_in, plus fc
    assert count_flops(toy, (3, 2, 8, 8)) == pytest.approx(macs / 1e9, rel=0.01)
    assert count_flops(toy, (2, 3, 2, 8, 8)) == pytest.approx(2 * macs / 1e9, rel=0.01)
    assert toy.training  # mode restored


def test_count_flops_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(C, T, H, W\)"):
        count_flops(Toy(), (8, 8))


def test_x3d_s_flops_match_the_x3d_table():
    # PySlowFast's X3D-S: 1.96 GFLOPs at 13x160^2; fvcore also counts batch-norm (+~3.5 %).
    model = models.build("x3d_s", 400)
    assert count_flops(model, models.get_spec("x3d_s").input_shape) == pytest.approx(1.96, rel=0.06)


def test_tiny_models_are_cpu_sized():
    for name in ("x3d_tiny", "x3d_tiny_m", "mvit_tiny", "swin3d_tiny"):
        spec = models.get_spec(name)
        assert count_flops(models.build(name, 6), spec.input_shape) < 0.5  # GFLOPs per 8x64^2 clip
    assert count_params(models.build("x3d_tiny", 6)) < count_params(models.build("x3d_tiny_m", 6))
