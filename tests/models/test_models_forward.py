"""One clip in, logits out, for every tiny model and the paper-scale models at a reduced clip;
the tiny models can learn."""
from __future__ import annotations

import pytest
import torch

from dtkd import models
from dtkd.models import FeatureTap

TINY = [n for n in models.list_models() if models.get_spec(n).scale == "tiny"]
# Paper-scale models at a reduced clip: 4 frames x 64^2 (SlowFast: 8 frames, two per alpha=4 step;
# the 4x16 model needs 8 per slow frame). The 50-90 M parameter builds are marked slow.
REDUCED = {
    "x3d_s": 4, "x3d_m": 4, "x3d_xs": 4, "x3d_l": 4, "i3d_r50": 4, "slow_r50": 4, "r2plus1d_r50": 4,
    "slowfast_r50": 8, "slowfast_r50_4x16": 16, "csn_r101": 4, "mvit_v2_s": 4, "mvit_b": 4, "swin3d_t": 4,
    "swin3d_s": 4, "swin3d_b": 4, "r2plus1d_r34": 4,
}
SLOW = {"swin3d_s", "swin3d_b", "r2plus1d_r34"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _forward_and_tap(name: str, frames: int, crop: int, num_classes: int = 7, batch: int = 2):
    spec = models.get_spec(name, frames=frames, crop_size=crop)
    model = models.build(name, num_classes, frames=frames, crop_size=crop).eval()
    x = torch.randn(batch, 3, frames, crop, crop)
    with FeatureTap(model, spec) as tap, torch.no_grad():
        logits = model(x)
        features = tap.features
    return spec, logits, features


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_forward_and_tap(name):
    spec = models.get_spec(name)
    spec, logits, features = _forward_and_tap(name, spec.frames, spec.crop_size)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    # Raw logits: not a softmax output.
    assert not torch.allclose(logits.sum(1), torch.ones(2))
    assert features.dim() == 5 and features.shape[:2] == (2, spec.feature_dim)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in REDUCED]
)
def test_paper_model_forward_and_tap_at_a_reduced_clip(name):
    spec, logits, features = _forward_and_tap(name, REDUCED[name], 64)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert features.dim() == 5 and features.shape[:2] == (2, spec.feature_dim)


def test_the_same_model_takes_other_clip_sizes():
    # Head pooling is adaptive: a CNN built for 8x64^2 also runs 16x96^2 clips.
    model = models.build("x3d_tiny", 4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 96, 96)).shape == (1, 4)
        assert models.build("slowfast_tiny", 4).eval()(torch.randn(1, 3, 16, 96, 96)).shape == (1, 4)


def test_slowfast_packs_pathways_and_rejects_misaligned_clips():
    model = models.build("slowfast_tiny", 3).eval()
    with pytest.raises(ValueError, match="divisible by alpha=4"):
        model(torch.randn(1, 3, 6, 64, 64))
    with pytest.raises(ValueError, match=r"one \(B, C, T, H, W\) tensor"):
        model(torch.randn(3, 6, 64, 64))


def _separable_batch(n_classes=3, per_class=2, frames=4, crop=32):
    """Clips whose class is a colour-and-motion pattern: learnable by any working video model."""
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for c in range(n_classes):
        for _ in range(per_class):
            x = 0.3 * torch.randn(3, frames, crop, crop, generator=g)
            x[c] += 1.0
            x[:, :, :, :: (c + 2)] += torch.linspace(-1, 1, frames).view(1, frames, 1, 1)
            xs.append(x)
            ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


# x3d_tiny_m is the same builder as x3d_tiny, wider and deeper: the student stands for both.
@pytest.mark.parametrize("name", ["x3d_tiny", "mvit_tiny", "swin3d_tiny"])
def test_tiny_models_learn(name):
    x, y = _separable_batch()
    model = models.build(name, 3, frames=4, crop_size=32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert min(losses[-5:]) < 0.25 * losses[0], losses
