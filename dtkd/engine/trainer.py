"""One training loop for teacher fine-tuning (distiller method ``none``) and for distillation.

The Trainer trains a :class:`dtkd.engine.contract.TrainingModule` and calls only what that
contract declares. It owns the sampler (deterministic and resumable), the optimiser and schedule,
AMP, DDP, checkpoints and the non-finite guard; what is particular to a method (e.g. cached
teacher outputs) comes from the module's ``setup`` as a ``TrainPlan``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dtkd.data.views import STUDENT_VIEW
from dtkd.engine import distributed as D
from dtkd.engine.callbacks import dispatch
from dtkd.engine.checkpoint import CheckpointManager, load, rng_state, set_rng_state
from dtkd.engine.config import TrainConfig
from dtkd.engine.conv_grad import restore_conv_grad, use_fast_conv_grad
from dtkd.engine.contract import RunContext, TrainingModule, TrainPlan
from dtkd.engine.optim import build_optimizer, build_scheduler
from dtkd.engine.sampling import EpochSampler, SeededViews, ShardSampler, derive_seed
from dtkd.eval.metrics import top1_correct

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_nonfinite`` consecutive steps with a NaN/inf loss or gradient."""


@dataclass
class TrainResult:
    history: list[dict]  # one metrics dict per finished epoch
    final_metrics: dict
    nonfinite_skipped: int  # optimiser steps skipped over the whole run (resumes included)
    best: dict | None = None  # the epoch with the highest val_top1 (None without validation)
    checkpoint: str | None = None  # the last checkpoint written


@dataclass
class _State:
    """Where the run is: the position of the NEXT batch, and what has been accumulated."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0  # consecutive
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_state: dict | None = None  # the module's training state at the best epoch (cfg.keep_best)
    sums: dict[str, float] = field(default_factory=dict)  # global partial-epoch sums (resume)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``TrainConfig.amp`` on ``device`` (None = full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs CUDA (GradScaler); use 'bf16' or 'off' on CPU")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class _Run:
    """Everything one ``fit`` builds; it lives as long as that call."""

    plan: TrainPlan
    loader: DataLoader
    sampler: EpochSampler
    val_loader: DataLoader | None
    params: list[nn.Parameter]
    model: nn.Module  # what the steps call: the module, or its DDP/compiled wrapper
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    buffers: list[torch.Tensor] = field(default_factory=list)  # student/head buffers a skipped step restores
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # this epoch's running sums
    t0: float = 0.0  # when this epoch (or its resumed part) started
    clips0: int = 0  # clips already done in this epoch before the resume


class Trainer:
    """Train a :class:`TrainingModule` (its student, plus any trainable distillation heads).

    ``checkpoint_dir``: enables checkpoints (every epoch, and every ``checkpoint_every``
    steps) and resume; it is also the module's ``RunContext.work_dir`` (a distiller keeps its
    teacher cache there). Callbacks and the progress bar run on rank 0 only.
    """

    def __init__(
        self,
        distiller: TrainingModule,
        cfg: TrainConfig,
        device: str | torch.device | None = None,
        callbacks: Iterable[Any] = (),
        checkpoint_dir: str | Path | None = None,
        *,
        progress: bool = True,
    ) -> None:
        if not isinstance(distiller, TrainingModule):
            raise TypeError(f"the Trainer trains a dtkd.engine.contract.TrainingModule, got {type(distiller).__name__}")
        self.distiller = distiller
        self.cfg = cfg
        self.info = D.current()
        if device is None:
            device = f"cuda:{self.info.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.callbacks = list(callbacks) if self.info.is_main else []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.ckpt = CheckpointManager(checkpoint_dir, cfg.keep_last) if checkpoint_dir else None
        self.progress = progress and self.info.is_main
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.channels_last = self.device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ public
    def fit(self, train: DataLoader | Dataset, val: DataLoader | Dataset | None = None, *, resume: bool | str | Path = True) -> TrainResult:
        """Train for ``cfg.epochs``. ``resume``: True = continue from the newest checkpoint in
        ``checkpoint_dir`` if there is one; a path = from that file; False = start fresh.

        Seeds the global RNGs from (cfg.seed, rank) first: dropout and the like are part of
        what a resumed run must reproduce.
        """
        _seed_all(derive_seed(self.cfg.seed, self.info.rank))
        self.distiller.to(self.device)
        if self.channels_last:
            self.distiller.to(memory_format=torch.channels_last_3d)
        fast_grad = self.cfg.fast_conv_grad and self.device.type == "cpu"
        if fast_grad:
            use_fast_conv_grad(self.distiller)
        self.distiller.train()

        dataset, loader_kw = self._unwrap(train, self.cfg.num_workers)
        seeded = dataset if isinstance(dataset, SeededViews) else SeededViews(dataset, self.cfg.seed)
        checkpoint = self._find_checkpoint(resume)
        ctx = RunContext(device=self.device, amp_dtype=self.amp_dtype, channels_last=self.channels_last,
                         batch_size=max(1, self.cfg.batch_size // self.info.world_size), loader_kwargs=loader_kw,
                         work_dir=self.checkpoint_dir, resumed=checkpoint is not None, progress=self.progress)
        plan = self.distiller.setup(seeded, ctx)
        try:
            st = _State()
            run = self._start(plan, loader_kw, val, st, checkpoint)
            return self._loop(run, st)
        finally:
            plan.close()
            if fast_grad:
                restore_conv_grad(self.distiller)

    @torch.no_grad()
    def validate(self, loader: DataLoader) -> dict[str, float]:
        """Top-1 and CE of the student on ``loader`` (multi-view clips: mean logits over views),
        summed over DDP ranks as correct/count, so the result is the exact global accuracy. A
        multi-head module (``heads``): top-1 is the action's (every head right), CE the heads' sum."""
        from dtkd.eval.metrics import cross_entropy_sum, view_averaged_logits

        heads = self.distiller.heads
        student = self.distiller.student
        student.eval()
        sums = {"n": 0.0, "correct": 0.0, "loss": 0.0}
        for batch in loader:
            clips = self._to_device(batch["inputs"][STUDENT_VIEW])
            target = torch.as_tensor(batch["label"]).to(self.device)
            with self._autocast():
                logits = view_averaged_logits(student, clips).float()
            sums["loss"] += cross_entropy_sum(logits, target, heads)
            sums["correct"] += top1_correct(logits, target, heads)
            sums["n"] += target.numel()
        self.distiller.train()
        tot = D.all_reduce_sums(sums, self.device)
        if tot["n"] == 0:
            raise ValueError("the validation loader is empty")
        return {"val_top1": tot["correct"] / tot["n"], "val_loss": tot["loss"] / tot["n"], "val_n": int(tot["n"])}

    # --------------------------------------------------------------- the loop
    def _start(self, plan: TrainPlan, loader_kw: dict, val, st: _State, checkpoint: tuple[Path, dict] | None) -> _Run:
        """The loader over the plan's data (seeded views, resumable DDP-aware sampler), the
        optimiser and schedule (restored from ``checkpoint`` into ``st``), and the module the
        steps call."""
        cfg = self.cfg
        sampler = EpochSampler(len(plan.data), cfg.batch_size, shuffle=True, seed=cfg.seed, num_views=plan.num_views,
                               rank=self.info.rank, world_size=self.info.world_size)
        loader = DataLoader(plan.data, batch_size=sampler.local_batch, sampler=sampler,
                            generator=torch.Generator().manual_seed(derive_seed(cfg.seed, self.info.rank, 3)), **loader_kw)
        val_loader = self._val_loader(val) if val is not None else None
        named = self._trainable_named()
        opt = build_optimizer(named, cfg)
        sched = build_scheduler(opt, cfg, sampler.steps_per_epoch)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if checkpoint is not None:
            self._restore(st, opt, sched, scaler, *checkpoint, sampler.steps_per_epoch)
        return _Run(plan=plan, loader=loader, sampler=sampler, val_loader=val_loader, params=[p for _, p in named],
                    model=self._wrap(), opt=opt, sched=sched, scaler=scaler,
                    buffers=[b for n, b in self.distiller.named_buffers() if not n.startswith("teachers.")])

    def _loop(self, run: _Run, st: _State) -> TrainResult:
        dispatch(self.callbacks, "on_train_start", self)
        for epoch in range(st.epoch, self.cfg.epochs):
            run.sampler.set_epoch(epoch, st.step_in_epoch)
            self.distiller.set_epoch(epoch)
            self._run_epoch(epoch, run, st)
            metrics = self._end_epoch(epoch, run, st)
            dispatch(self.callbacks, "on_epoch_end", epoch, metrics)
        if self.cfg.keep_best and st.best_state is not None:  # end on the epoch chosen on validation
            self.distiller.load_training_state_dict(st.best_state)
            log.info("kept the weights of epoch %d (val_top1 %.4f)", st.best["epoch"], st.best["val_top1"])
        final = st.history[-1] if st.history else {}
        result = TrainResult(st.history, final, st.nonfinite_total, st.best,
                             str(self.last_checkpoint) if self.last_checkpoint else None)
        dispatch(self.callbacks, "on_train_end", result)
        return result

    def _run_epoch(self, epoch: int, run: _Run, st: _State) -> None:
        cfg = self.cfg
        # Rank 0 carries the partial sums of a resumed epoch; the others start at zero. Every
        # rank must hold the same keys: they are reduced in one collective.
        start = {"n": 0.0, "loss": 0.0, "correct": 0.0, "nonfinite": 0.0, **st.sums}
        run.sums = {k: torch.tensor(v if self.info.is_main else 0.0, dtype=torch.float64, device=self.device)
                    for k, v in start.items()}
        window: dict[str, torch.Tensor] = {}
        run.t0, run.clips0 = time.perf_counter(), st.step_in_epoch * cfg.batch_size
        bar = self._bar(epoch, run.sampler)
        for batch in run.loader:
            ok, out, loss = self._train_step(run, batch)
            st.global_step += 1
            st.step_in_epoch += 1
            if ok:
                st.nonfinite_run = 0
                sums = self._batch_sums(out, loss, batch)
                for acc in (run.sums, window):
                    for k, v in sums.items():
                        acc[k] = acc.get(k, 0.0) + v
            else:
                st.nonfinite_total += 1
                st.nonfinite_run += 1
                run.sums["nonfinite"] += float(self.info.is_main)  # all ranks skipped: count once
                if st.nonfinite_run >= cfg.max_nonfinite:
                    bar.close()
                    raise NonFiniteLossError(
                        f"{st.nonfinite_run} consecutive non-finite losses/gradients (epoch {epoch}, step "
                        f"{st.step_in_epoch}/{run.sampler.steps_per_epoch}; max_nonfinite={cfg.max_nonfinite}). "
                        f"Those steps were skipped, the weights are the last finite ones; last good checkpoint: "
                        f"{self._last_good()}"
                    )
            bar.update(1)
            if st.global_step % cfg.log_every == 0:
                w = D.all_reduce_sums(window, self.device)
                window = {}
                metrics = {"epoch": epoch, "lr": run.sched.get_last_lr()[0], **self._means(w, "")}
                bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{metrics['lr']:.2e}")
                dispatch(self.callbacks, "on_step_end", st.global_step, metrics)
            if (self.ckpt and cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0
                    and st.step_in_epoch < run.sampler.steps_per_epoch):
                st.sums = D.all_reduce_sums(run.sums, self.device)
                self._save_if_finite(st, run)
        bar.close()

    def _train_step(self, run: _Run, batch) -> tuple[bool, Any, torch.Tensor]:
        opt, scaler = run.opt, run.scaler
        inputs = {k: self._to_device(v) for k, v in batch["inputs"].items()}
        target = torch.as_tensor(batch["label"]).to(self.device, non_blocking=True)
        extras = run.plan.extras(batch) if run.plan.extras is not None else {}
        # The forward pass moves BatchNorm running statistics before the loss is known: keep a
        # copy, so that a skipped (non-finite) step leaves every buffer as it found it.
        saved = [b.detach().clone() for b in run.buffers]
        with self._autocast():
            out = run.model(inputs, target, **extras)
        loss = out.loss.float()
        # Backward runs even for a NaN loss (rare): every DDP rank then takes part in the same
        # gradient all-reduce, and one flag below decides for all of them.
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if self.cfg.grad_clip:
            norm = nn.utils.clip_grad_norm_(run.params, self.cfg.grad_clip)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in run.params if p.grad is not None])
        # A finite loss can still give inf/NaN gradients. With fp16 the scaler skips those
        # steps itself (overflow while it calibrates is normal, not an error). DDP gradients
        # are already averaged, so the norm is the same on every rank.
        finite = torch.isfinite(loss.detach()) & (torch.isfinite(norm) | scaler.is_enabled())
        ok = D.all_true(finite, self.device)  # the step's one host sync
        if ok:
            scaler.step(opt)
        else:
            with torch.no_grad():
                for buf, copy in zip(run.buffers, saved):
                    buf.copy_(copy)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        run.sched.step()  # the schedule follows the data position, skipped or not
        return ok, out, loss

    def _end_epoch(self, epoch: int, run: _Run, st: _State) -> dict:
        sums = D.all_reduce_sums(run.sums, self.device)
        elapsed = time.perf_counter() - run.t0
        clips = st.step_in_epoch * self.cfg.batch_size - run.clips0
        metrics: dict[str, Any] = {"epoch": epoch, **self._means(sums, "train_"), "lr": run.sched.get_last_lr()[0],
                                   "nonfinite_skipped": int(round(sums.get("nonfinite", 0.0))),
                                   "epoch_time_s": elapsed, "clips_per_s": clips / elapsed if elapsed > 0 else 0.0}
        last = epoch + 1 == self.cfg.epochs
        if run.val_loader is not None and self.cfg.val_every and ((epoch + 1) % self.cfg.val_every == 0 or last):
            metrics.update(self.validate(run.val_loader))
            if st.best is None or metrics["val_top1"] > st.best["val_top1"]:
                st.best = dict(metrics)
                if self.cfg.keep_best:
                    st.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.distiller.training_state_dict().items()}
        st.history.append(metrics)
        st.epoch, st.step_in_epoch, st.sums = epoch + 1, 0, {}
        if self.ckpt:
            self._save_if_finite(st, run)
        return metrics

    def _batch_sums(self, out, loss: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        # float64 sums: a resumed epoch continues from the checkpointed sums bit-exactly.
        f64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
        target = torch.as_tensor(batch["label"]).to(self.device)
        n = target.numel()
        labelled = target >= 0  # -1: an unlabelled transfer-set clip (no accuracy to count)
        sums = {"n": torch.tensor(float(n), dtype=torch.float64, device=self.device), "loss": f64(loss) * n,
                "correct": f64(top1_correct(out.logits.detach(), target, self.distiller.heads)),
                "labelled": f64(labelled.sum())}
        sums.update({f"loss/{k}": f64(v) * n for k, v in out.losses.items()})
        return sums

    @staticmethod
    def _means(sums: Mapping[str, float], prefix: str) -> dict[str, float]:
        n = sums.get("n", 0.0)
        out = {}
        for k, v in sums.items():
            if k in ("n", "nonfinite", "labelled"):
                continue
            name = "top1" if k == "correct" else k
            d = sums.get("labelled", n) if k == "correct" else n
            out[prefix + name] = v / d if d else math.nan
        return out

    # ------------------------------------------------------- checkpoint/resume
    def _last_good(self) -> str:
        if self.last_checkpoint is not None:
            return str(self.last_checkpoint)
        return f"none yet in {self.ckpt.dir}" if self.ckpt else "none (no checkpoint_dir)"

    def _save_if_finite(self, st: _State, run: _Run) -> None:
        """A checkpoint only after a finite step: one written inside a streak of skipped steps
        would be named "last good" while the streak might end the run."""
        if st.nonfinite_run:
            log.warning("checkpoint at step %d not written: the last %d step(s) were non-finite; last good: %s",
                        st.global_step, st.nonfinite_run, self._last_good())
            return
        self._save(st, run)

    def _save(self, st: _State, run: _Run) -> None:
        rngs = D.gather_objects(rng_state())  # collective: every rank's RNG
        if not self.info.is_main:
            return
        state = {
            "format": 1,
            "epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step,
            "nonfinite_total": st.nonfinite_total, "nonfinite_run": st.nonfinite_run,
            "history": st.history, "best": st.best, "best_state": st.best_state, "sums": st.sums,
            "model": self.distiller.training_state_dict(), "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict(), "rng": rngs,
            "world_size": self.info.world_size, "steps_per_epoch": run.sampler.steps_per_epoch,
            "config": self.cfg.model_dump(mode="json"),
        }
        self.last_checkpoint = self.ckpt.save(state, st.global_step)

    def _find_checkpoint(self, resume: bool | str | Path) -> tuple[Path, dict] | None:
        """The checkpoint ``fit(resume=...)`` continues from, loaded, or None for a fresh run."""
        if not resume:
            return None
        if resume is not True:
            return Path(resume), load(Path(resume))
        return self.ckpt.load_latest() if self.ckpt else None

    def _restore(self, st: _State, opt, sched, scaler, path: Path, ck: dict, steps_per_epoch: int) -> None:
        if ck["steps_per_epoch"] != steps_per_epoch or ck["config"]["batch_size"] != self.cfg.batch_size:
            raise ValueError(
                f"cannot resume from {path}: it has {ck['steps_per_epoch']} steps/epoch at batch_size "
                f"{ck['config']['batch_size']}, this run has {steps_per_epoch} at {self.cfg.batch_size}"
            )
        try:
            self.distiller.load_training_state_dict(ck["model"])
        except KeyError as err:
            raise ValueError(f"checkpoint {path} does not fit this model: {err.args[0]}") from None
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        for k in ("epoch", "step_in_epoch", "global_step", "nonfinite_total", "nonfinite_run", "history", "best", "sums"):
            setattr(st, k, ck[k])
        st.best_state = ck.get("best_state")
        if len(ck["rng"]) == self.info.world_size:
            set_rng_state(ck["rng"][self.info.rank])
        else:  # a different world size: per-rank streams cannot be matched, reseed them
            log.warning("resuming on %d processes from a %d-process checkpoint: RNG streams reseeded",
                        self.info.world_size, len(ck["rng"]))
            _seed_all(derive_seed(self.cfg.seed, self.info.rank, st.global_step))
        self.last_checkpoint = path
        log.info("resumed from %s at epoch %d step %d", path, st.epoch, st.step_in_epoch)

    # ---------------------------------------------------------------- helpers
    def _trainable_named(self) -> list[tuple[str, nn.Parameter]]:
        ids = {id(p) for p in self.distiller.trainable_parameters()}
        named = [(n, p) for n, p in self.distiller.named_parameters() if id(p) in ids]
        if len(named) != len(ids):
            raise ValueError("trainable_parameters() returned tensors that are not parameters of the module")
        return named

    def _wrap(self) -> nn.Module:
        """The module the steps call: DDP under torchrun, compiled if asked."""
        model: nn.Module = self.distiller
        if self.info.enabled:
            dev = self.device
            model = nn.parallel.DistributedDataParallel(
                self.distiller, device_ids=[dev] if dev.type == "cuda" else None,
                find_unused_parameters=self.cfg.find_unused_parameters,
            )
        if self.cfg.compile:
            model.compile()
        return model

    def _unwrap(self, data: DataLoader | Dataset, num_workers: int) -> tuple[Dataset, dict]:
        """The dataset behind ``data`` and the loader settings to keep (workers, collate)."""
        pin = self.cfg.pin_memory if self.cfg.pin_memory is not None else self.device.type == "cuda"
        if isinstance(data, DataLoader):
            kw = {"num_workers": data.num_workers, "collate_fn": data.collate_fn, "pin_memory": data.pin_memory or pin}
            data = data.dataset
        else:
            kw = {"num_workers": num_workers, "pin_memory": pin}
        kw["persistent_workers"] = kw["num_workers"] > 0
        return data, kw

    def _val_loader(self, val: DataLoader | Dataset) -> DataLoader:
        if isinstance(val, DataLoader) and not self.info.enabled:
            return val
        dataset, kw = self._unwrap(val, self.cfg.num_workers)
        batch = val.batch_size if isinstance(val, DataLoader) and val.batch_size else max(1, self.cfg.batch_size // self.info.world_size)
        kw["persistent_workers"] = False
        return DataLoader(dataset, batch_size=batch, sampler=ShardSampler(len(dataset), self.info.rank, self.info.world_size), **kw)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _bar(self, epoch: int, sampler: EpochSampler):
        from tqdm.auto import tqdm

        return tqdm(total=sampler.steps_per_epoch, initial=sampler.start_step, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                    disable=not self.progress, leave=False, dynamic_ncols=True)
