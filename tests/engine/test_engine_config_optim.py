"""TrainConfig validation, parameter groups and hand-computed learning-rate schedules."""
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from dtkd.engine.config import TrainConfig
from dtkd.engine.optim import LRFactor, build_optimizer, build_scheduler, param_groups


def test_config_forbids_unknown_keys_and_names_them():
    with pytest.raises(ValidationError, match="lr_typo"):
        TrainConfig(lr_typo=0.1)


@pytest.mark.parametrize("bad", [
    dict(milestones=[5, 3]),
    dict(milestones=[0, 3]),
    dict(milestones=[3], scheduler="cosine"),
    dict(epochs=4, warmup_epochs=4),
    dict(lr=0),
    dict(optimizer="lamb"),
    dict(amp="fp8"),
])
def test_config_rejects_inconsistent_values(bad):
    with pytest.raises(ValidationError):
        TrainConfig(**bad)


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(epochs=7, milestones=[3, 5], grad_clip=1.0, warmup_epochs=0.5)
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_multistep_with_warmup_matches_hand_computation():
    # 4 steps/epoch, warm-up 1 epoch (4 steps), milestones at epochs 2 and 3, gamma 0.1.
    f = LRFactor(TrainConfig(epochs=4, milestones=[2, 3], gamma=0.1, warmup_epochs=1), steps_per_epoch=4)
    expected = [0.25, 0.5, 0.75, 1.0, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01]
    assert [f(s) for s in range(16)] == pytest.approx(expected)


def test_cosine_with_floor_matches_hand_computation():
    # 10 steps, 2 of warm-up; the remaining 8 anneal from 1 to the 0.1 floor.
    f = LRFactor(TrainConfig(epochs=5, scheduler="cosine", warmup_epochs=1, min_lr_ratio=0.1), steps_per_epoch=2)
    assert f(0) == pytest.approx(0.5 * 1.0)  # warm-up 1/2 of the (still undecayed) cosine
    assert f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0)  # t = 0
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))  # = 0.55
    assert f(6) == pytest.approx(0.55)
    assert f(10) == pytest.approx(0.1)  # past the end stays at the floor


def test_constant_schedule_is_flat():
    f = LRFactor(TrainConfig(epochs=3, scheduler="constant"), steps_per_epoch=5)
    assert {f(s) for s in range(15)} == {1.0}


def test_scheduler_drives_the_optimizer_lr_per_step():
    model = nn.Linear(2, 2)
    cfg = TrainConfig(epochs=3, lr=0.2, milestones=[1, 2], gamma=0.5)
    opt = build_optimizer(model.named_parameters(), cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=2)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    # The schedule pickles with the checkpoint: a fresh scheduler continues where it left off.
    opt2 = build_optimizer(model.named_parameters(), cfg)
    sched2 = build_scheduler(opt2, cfg, steps_per_epoch=2)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_norms_and_biases_get_no_weight_decay():
    model = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.Linear(4, 2))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    named = list(model.named_parameters()) + list(frozen.named_parameters())
    groups = param_groups(named, TrainConfig(weight_decay=0.05))
    decayed, plain = groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {5, 2}  # conv and linear weights
    assert all(p.ndim == 1 for p in plain["params"])  # conv/linear biases, BN weight/bias
    assert len(decayed["params"]) + len(plain["params"]) == 6  # the frozen layer is left out
    assert len(param_groups(model.named_parameters(), TrainConfig(decay_norm_and_bias=True))) == 1


def test_adamw_uses_momentum_as_beta1():
    opt = build_optimizer(nn.Linear(2, 2).named_parameters(), TrainConfig(optimizer="adamw", momentum=0.8, lr=1e-3))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.999)


def test_everything_frozen_is_a_clear_error():
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.Linear(2, 2).requires_grad_(False).named_parameters(), TrainConfig())
