"""The training loop: it learns, reports exact metrics, clips, guards against NaN, resumes."""
import math

import pytest
import torch
from engine_helpers import ToyClips, ToyDistiller, ToyNet, fast_cfg, toy_distiller, weights

from dtkd.engine import History, NonFiniteLossError, Trainer
from dtkd.engine.checkpoint import CheckpointManager
from dtkd.engine.optim import LRFactor
from dtkd.engine.sampling import EpochSampler
from dtkd.engine.trainer import resolve_amp


def test_it_learns_and_reports_one_metrics_dict_per_epoch():
    hist = History()
    cfg = fast_cfg(epochs=10, lr=0.01, optimizer="adamw", scheduler="cosine", log_every=5)
    result = Trainer(toy_distiller(), cfg, callbacks=[hist], progress=False).fit(ToyClips(24), ToyClips(9, train=False, seed=1))
    losses = [h["train_loss"] for h in result.history]
    assert len(result.history) == 10 and [e for e, _ in hist.epochs] == list(range(10))
    assert losses[-1] < losses[0] - 0.15
    assert result.final_metrics["val_top1"] > 1 / 3 and result.final_metrics["val_n"] == 9
    assert result.best["val_top1"] == max(h["val_top1"] for h in result.history)
    assert result.nonfinite_skipped == 0
    # 24 clips / batch 4 = 6 steps per epoch, a step callback every 5 steps.
    assert [s for s, _ in hist.steps] == list(range(5, 61, 5))
    # The terms the distiller reports are averaged like the loss: CE is the only one here.
    assert result.history[0]["train_loss/ce"] == pytest.approx(result.history[0]["train_loss"])


def test_epoch_metrics_are_exact_sample_means():
    seen = []  # what each step trained on, straight from the distiller
    d = toy_distiller()
    forward = d.forward

    def recording_forward(inputs, target, teacher_outputs=None):
        out = forward(inputs, target, teacher_outputs)
        seen.append((out.loss.item(), (out.logits.argmax(1) == target).sum().item(), len(target)))
        return out

    d.forward = recording_forward
    r = Trainer(d, fast_cfg(epochs=1, lr=0.0001), progress=False).fit(ToyClips(12))
    n = sum(c for _, _, c in seen)
    assert r.history[0]["train_loss"] == pytest.approx(sum(l * c for l, _, c in seen) / n)
    assert r.history[0]["train_top1"] == pytest.approx(sum(k for _, k, _ in seen) / n)


def test_logged_learning_rate_follows_the_schedule():
    hist = History()
    cfg = fast_cfg(epochs=3, lr=0.1, milestones=[1, 2], gamma=0.5, warmup_epochs=0.5)
    Trainer(toy_distiller(), cfg, callbacks=[hist], progress=False).fit(ToyClips(16))
    f = LRFactor(cfg, steps_per_epoch=4)
    # on_step_end(step) reports the lr the NEXT step will use (the scheduler has stepped).
    assert [m["lr"] for _, m in hist.steps] == pytest.approx([0.1 * f(s) for s in range(1, 13)])


def test_gradient_clipping_bounds_every_update():
    # Plain SGD (no momentum, no decay): each update is exactly lr * clipped gradient.
    d = toy_distiller()
    lr, clip = 0.5, 0.01
    snaps = [torch.cat([p.detach().flatten().clone() for p in d.trainable_parameters()])]

    class Snap:
        def on_step_end(self, step, metrics):
            snaps.append(torch.cat([p.detach().flatten().clone() for p in d.trainable_parameters()]))

        def on_epoch_end(self, epoch, metrics):
            pass

    cfg = fast_cfg(epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, grad_clip=clip)
    Trainer(d, cfg, callbacks=[Snap()], progress=False).fit(ToyClips(16))
    norms = [(b - a).norm().item() for a, b in zip(snaps, snaps[1:])]
    assert len(norms) == 4
    # The toy's raw gradient norm is far above 0.01, so every step is clipped to exactly lr*clip.
    assert norms == pytest.approx([lr * clip] * 4, rel=1e-3)


def test_amp_resolution():
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_amp("off", torch.device("cuda")) is None
    with pytest.raises(ValueError, match="fp16"):
        resolve_amp("fp16", torch.device("cpu"))


def test_bf16_autocast_trains_on_cpu():
    r = Trainer(toy_distiller(), fast_cfg(epochs=1, amp="bf16"), progress=False).fit(ToyClips(8), ToyClips(3, train=False))
    assert math.isfinite(r.final_metrics["train_loss"]) and math.isfinite(r.final_metrics["val_loss"])


def test_distiller_is_told_each_epoch():
    d = toy_distiller()
    epochs = []
    d.set_epoch = epochs.append
    Trainer(d, fast_cfg(epochs=3), progress=False).fit(ToyClips(8))
    assert epochs == [0, 1, 2]


def _batches_with(nan: set, n: int, batch: int, epoch: int, seed: int = 0) -> list[int]:
    s = EpochSampler(n, batch, seed=seed)
    s.set_epoch(epoch)
    idx = [k.index for k in s]
    return [j for j in range(len(idx) // batch) if nan & set(idx[j * batch : (j + 1) * batch])]


@pytest.mark.parametrize("norm", [False, True], ids=["no-norm", "batchnorm"])
def test_a_nonfinite_loss_skips_the_step_and_is_counted(norm):
    # With BatchNorm, ``weights`` holds its running statistics too: the NaN batch's forward pass
    # moved them, and the skipped step must put them back (not leave running_var = NaN).
    nan = {3}
    bad = _batches_with(nan, 16, 4, epoch=0)
    d = toy_distiller(norm=norm)
    before = {}

    class Watch:
        def __init__(self):
            self.prev = weights(d)
            self.unchanged = []

        def on_step_end(self, step, metrics):
            now = weights(d)
            self.unchanged.append(all(torch.equal(now[k], self.prev[k]) for k in now))
            self.prev = now

        def on_epoch_end(self, epoch, metrics):
            before[epoch] = metrics

    w = Watch()
    r = Trainer(d, fast_cfg(epochs=1, max_nonfinite=2), callbacks=[w], progress=False).fit(ToyClips(16, nan_indices=nan))
    assert r.nonfinite_skipped == len(bad) == 1 and before[0]["nonfinite_skipped"] == 1
    assert [j for j, same in enumerate(w.unchanged) if same] == bad  # exactly the NaN step left weights alone
    assert all(torch.isfinite(v).all() for v in weights(d).values())
    assert math.isfinite(r.final_metrics["train_loss"])  # NaN steps are not averaged in


def test_consecutive_nonfinite_losses_stop_the_run_with_the_last_checkpoint_intact(tmp_path):
    data = ToyClips(16)
    d = toy_distiller()
    good = {}

    class PoisonAfterFirstEpoch:
        def on_epoch_end(self, epoch, metrics):
            good.update(weights(d))
            data.nan = set(range(16))  # every later batch is NaN

    cfg = fast_cfg(epochs=3, max_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite") as err:
        Trainer(d, cfg, callbacks=[PoisonAfterFirstEpoch()], checkpoint_dir=tmp_path, progress=False).fit(data)
    ckpts = CheckpointManager(tmp_path).list()
    assert [p.name for p in ckpts] == ["ckpt-000000004.pt"]  # end of epoch 0 (4 steps); nothing after
    assert str(ckpts[0]) in str(err.value)
    assert all(torch.equal(weights(d)[k], good[k]) for k in good)  # no NaN step touched the weights
    saved = torch.load(ckpts[0], weights_only=True)["model"]
    assert all(torch.equal(saved[f"student.{k}"], v) for k, v in good.items())


def test_no_checkpoint_is_written_while_the_last_steps_were_nonfinite(tmp_path):
    data = ToyClips(16)
    d = toy_distiller(norm=True)

    class PoisonAfterFirstEpoch:
        def on_epoch_end(self, epoch, metrics):
            data.nan = set(range(16))

    # max_nonfinite above the 8 poisoned steps: the run ends "normally" inside the streak.
    Trainer(d, fast_cfg(epochs=3, max_nonfinite=100), callbacks=[PoisonAfterFirstEpoch()], checkpoint_dir=tmp_path,
            progress=False).fit(data)
    ckpts = CheckpointManager(tmp_path).list()
    assert [p.name for p in ckpts] == ["ckpt-000000004.pt"]
    saved = torch.load(ckpts[0], weights_only=True)["model"]
    assert all(torch.isfinite(v.float()).all() for v in saved.values())


def test_the_stop_message_says_no_checkpoint_was_written_yet(tmp_path):
    with pytest.raises(NonFiniteLossError, match=f"last good checkpoint: none yet in {tmp_path}"):
        Trainer(toy_distiller(), fast_cfg(epochs=1, max_nonfinite=2), checkpoint_dir=tmp_path,
                progress=False).fit(ToyClips(16, nan_indices=range(16)))
    assert CheckpointManager(tmp_path).list() == []


def test_channels_last_trains_to_the_same_weights():
    runs = []
    for cl in (False, True):
        d = toy_distiller()
        Trainer(d, fast_cfg(epochs=1, channels_last=cl), progress=False).fit(ToyClips(8))
        runs.append(weights(d))
        if cl:
            assert d.student.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    for k in runs[0]:
        torch.testing.assert_close(runs[1][k], runs[0][k], rtol=1e-4, atol=1e-6)


def test_compile_option_compiles_the_training_module(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: compiled.append(type(self).__name__))
    Trainer(toy_distiller(), fast_cfg(epochs=1, compile=True), progress=False).fit(ToyClips(8))
    assert compiled == ["ToyDistiller"]


def test_a_cache_built_for_other_clips_is_refused(tmp_path):
    from dtkd.distill import TeacherCache
    from dtkd.engine.sampling import SeededViews

    d = toy_distiller(teachers=True)
    d.teacher_cache = TeacherCache.build(d, SeededViews(ToyClips(8, views=("student", "cnn", "vit")), seed=1), tmp_path,
                                         num_views=1)
    with pytest.raises(ValueError, match="would not see the cached views"):
        Trainer(d, fast_cfg(epochs=1, seed=0), progress=False).fit(ToyClips(8, views=("student", "cnn", "vit")))


class _Preparing(ToyDistiller):
    """A toy distiller that asks for a phi-style fit and records what the fit saw."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int]] = []
        self.fitted = False

    @property
    def needs_prepare(self) -> bool:
        return not self.fitted

    def prepare(self, loader, max_batches=None) -> dict:
        for batch in loader:
            self.seen += list(zip(batch["index"].tolist(), batch["view_id"].tolist()))
            assert (batch.get("teacher_outputs") is not None) == (self.cfg.teacher_cache_views > 0)
        self.fitted = True
        return {}


@pytest.mark.parametrize("views, cache_views, expected", [(1, 0, 1), (3, 0, 3), (3, 2, 2)])
def test_prepare_sees_every_clip_on_the_first_views(views, cache_views, expected, tmp_path):
    # The closed-form phi fit must not see only epoch 0's views (it would fit their residual
    # away by chance); with cached teachers it can only use the views the cache holds.
    torch.manual_seed(1000)
    teachers = {"cnn": ToyNet(width=8), "vit": ToyNet(width=8)} if cache_views else None
    d = _Preparing(ToyNet(), teachers, cache_views=cache_views, prepare_views=views)
    clips = ToyClips(10, views=("student", "cnn", "vit") if cache_views else ("student",))
    Trainer(d, fast_cfg(epochs=1), progress=False, checkpoint_dir=tmp_path).fit(clips)
    assert sorted(d.seen) == [(i, v) for i in range(10) for v in range(expected)]


def test_a_resumed_run_does_not_fit_again(tmp_path):
    d = _Preparing(ToyNet())
    Trainer(d, fast_cfg(epochs=1), progress=False, checkpoint_dir=tmp_path).fit(ToyClips(8))
    again = _Preparing(ToyNet())
    Trainer(again, fast_cfg(epochs=2), progress=False, checkpoint_dir=tmp_path).fit(ToyClips(8))
    assert d.seen and not again.seen  # its state came from the checkpoint


def test_the_trainer_trains_only_a_training_module():
    with pytest.raises(TypeError, match="TrainingModule"):
        Trainer(ToyNet(), fast_cfg())


class _Snapshots:
    """Callback: the student's weights and val_top1 at the end of every epoch."""

    def __init__(self, distiller) -> None:
        self.distiller, self.epochs = distiller, []

    def on_epoch_end(self, epoch, metrics) -> None:
        self.epochs.append((metrics["val_top1"], weights(self.distiller)))


@pytest.mark.parametrize("keep_best", [False, True])
def test_keep_best_ends_on_the_epoch_chosen_on_validation(keep_best):
    d = toy_distiller()
    snaps = _Snapshots(d)
    cfg = fast_cfg(epochs=4, lr=0.1, keep_best=keep_best)  # val_top1 per epoch: 1/3, 1/3, 5/9, 1/3
    result = Trainer(d, cfg, progress=False, callbacks=[snaps]).fit(ToyClips(12), ToyClips(9, train=False, seed=1))
    tops = [top for top, _ in snaps.epochs]
    best = max(range(4), key=lambda e: (tops[e], -e))  # the first epoch with the highest val_top1
    assert result.best["epoch"] == best == 2  # neither the first nor the last epoch
    expected = snaps.epochs[best if keep_best else -1][1]
    assert all(torch.equal(v, expected[k]) for k, v in weights(d).items())


def test_keep_best_survives_a_resume(tmp_path):
    def run(epochs, directory):
        d = toy_distiller()
        Trainer(d, fast_cfg(epochs=epochs, lr=0.1, keep_best=True), progress=False, checkpoint_dir=directory).fit(
            ToyClips(12), ToyClips(9, train=False, seed=1))
        return weights(d)

    straight = run(4, tmp_path / "a")
    run(3, tmp_path / "b")  # the best epoch (2) is behind the resume point
    resumed = run(4, tmp_path / "b")
    assert all(torch.equal(v, straight[k]) for k, v in resumed.items())
