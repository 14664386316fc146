"""Every method on the real dtkd.models tiny models, through the real FeatureTap.

Student x3d_tiny, CNN teacher x3d_tiny_m, ViT teacher mvit_tiny (tokens on their grid).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

models = pytest.importorskip("dtkd.models")
from distill_helpers import TinyClips, tiny_zoo  # noqa: E402
from dtkd.distill import DistillConfig, build_distiller  # noqa: E402

N = 5
# Two 3-clip batches give too few locations for a 432-channel ridge fit; that is expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:phi_CNN fitted on"),
    pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),  # pytorchvideo
]
METHODS = ["none", "kd", "dkd", "at", "mgd", "rkd", "dtkd"]


@pytest.fixture(scope="module")
def zoo():
    return tiny_zoo(N, 2)


def make(zoo, method, **cfg):
    student, spec, refs, batches = zoo
    fresh = models.build("x3d_tiny", N)
    fresh.load_state_dict(student.state_dict())
    d = build_distiller(DistillConfig(method=method, **cfg), fresh, spec, refs)
    d.set_epoch(0)
    d.prepare([{"inputs": b} for b in batches])
    return d


@pytest.mark.parametrize("method", METHODS)
def test_method_forward_backward_on_tiny_models(zoo, method):
    d = make(zoo, method).train()
    out = d(zoo[3][0], torch.tensor([0, 1, 4]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in d.teachers.parameters())
    assert all(not m.training for m in d.teachers.modules())
    plain = models.build("x3d_tiny", N)
    assert d.student.state_dict().keys() == plain.state_dict().keys()
    assert sum(p.numel() for p in d.student.parameters()) == sum(p.numel() for p in plain.parameters())


def test_sd_reaches_the_x3d_backbone_and_cache_matches(zoo):
    d = make(zoo, "dtkd", use_sr=False, use_rkd=False).train()
    x = zoo[3][0]
    y = torch.tensor([0, 1, 4])
    out = d(x, y)
    sd = out.loss - F.cross_entropy(out.logits.float(), y)
    first_conv = next(p for n, p in d.student.named_parameters() if p.dim() == 5)
    (g,) = torch.autograd.grad(sd, first_conv)
    assert g.abs().sum() > 0
    d.eval()
    cache = d.teacher_forward(x)
    assert cache["vit"]["features"].shape[:2] == (3, models.get_spec("mvit_tiny").feature_dim)
    live = d(x, y)
    cached = d({"student": x["student"]}, y, teacher_outputs=cache)
    torch.testing.assert_close(cached.losses["sd"], live.losses["sd"])


def test_a_method_without_teachers_caches_nothing_but_sees_the_same_views(zoo, tmp_path):
    # `none` given teachers (as bench/methods.py does for every row) with teacher_cache_views set:
    # nothing to cache, so train CE-only instead of failing, on the same 2 fixed views per clip as
    # the cached rows (one view regime for every row of a comparison).
    from dtkd.engine import History, Trainer, TrainConfig
    from dtkd.engine.sampling import SeededViews

    d = make(zoo, "none", teacher_cache_views=2)
    seen = []

    class Spy(SeededViews):
        def __getitem__(self, key):
            seen.append(tuple(key))
            return super().__getitem__(key)

    result = Trainer(d, TrainConfig(epochs=3, batch_size=3), progress=False, checkpoint_dir=tmp_path,
                     callbacks=[History()]).fit(Spy(TinyClips(6, N)))
    assert not (tmp_path / "teacher_cache").exists()
    assert set(k for k in result.history[0] if k.startswith("train_loss/")) == {"train_loss/ce"}
    assert {v for _, v in seen} == {0, 1}  # 3 epochs, yet only views 0 and 1 of each clip
