"""The ``Distiller`` base class and ``build_distiller``.

A Distiller wraps the plain student, the frozen teachers and the training-only parts of
one method (SDB, generator, ...). It is the engine's ``TrainingModule``: ``forward`` returns the
total loss (CE included) and the named terms, and ``setup`` prepares what the method needs before
the first step (the teacher cache, the closed-form phi fit). ``distiller.student`` stays a plain
student that can be saved and exported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Literal, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dtkd.data.heads import HeadLayout
from dtkd.data.views import STUDENT_VIEW
from dtkd.engine import distributed as D
from dtkd.engine.contract import RunContext, StepOutput, TrainingModule, TrainPlan
from dtkd.engine.sampling import SeededViews, ViewKey

from .config import DistillConfig
from .losses.heads import multihead_cross_entropy, per_head
from .features import TapFactory, default_tap_factory
from .registry import DISTILLERS
from .teacher_cache import TeacherCache, cached_plan

log = logging.getLogger(__name__)

TeacherOutputs = dict[str, dict[str, Tensor]]
DistillOutput = StepOutput  # what forward returns: logits, named losses, total loss


@dataclass
class TeacherRef:
    """A teacher and how to use it. ``model`` may be None when its outputs always come cached."""

    name: str
    model: Optional[nn.Module]
    spec: Any
    role: Literal["vit", "cnn"]

    def __post_init__(self) -> None:
        if self.role not in ("vit", "cnn"):
            raise ValueError(f"teacher {self.name!r}: role must be 'vit' or 'cnn', got {self.role!r}")
        if not self.name or "." in self.name or self.name == STUDENT_VIEW:
            raise ValueError(f"invalid teacher name {self.name!r} (non-empty, no '.', not {STUDENT_VIEW!r})")


def feature_channels(spec: Any, who: str) -> int:
    """Channel count of a model's tapped map, from ``spec.feature_dim``."""
    c = getattr(spec, "feature_dim", None)
    if not isinstance(c, int) or c <= 0:
        raise ValueError(f"{who}: spec.feature_dim must be the channel count of the tapped feature map, got {c!r}")
    return c


def unpack_batch(batch: Any) -> tuple[Mapping[str, Tensor], Optional[Mapping[str, Any]]]:
    """Views and optional cached teacher outputs from a loader batch (dict or (inputs, ...))."""
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    if isinstance(batch, Mapping) and "inputs" in batch:
        return batch["inputs"], batch.get("teacher_outputs")
    if isinstance(batch, Mapping):
        return batch, None
    raise TypeError(f"cannot read views from a batch of type {type(batch).__name__}")


class Distiller(TrainingModule):
    """Base class: CE on the student plus the weighted terms of ``distill_terms``.

    Subclasses set ``active_teachers`` (names whose outputs they need), ``feature_teachers``
    (the subset whose feature maps they need), ``needs_student_features`` and implement
    ``distill_terms``. ``teacher_cache``: a ready cache to take the teachers' outputs from
    (else ``cfg.teacher_cache_views`` > 0 builds one in ``setup``).

    ``heads``: a multi-head student and teachers (dtkd.data.heads: concatenated logits, targets
    coded per HeadLayout): CE per head, summed; logit terms per head via ``logit_term``. Only
    methods with ``supports_heads`` accept it.
    """

    name: ClassVar[str] = "base"
    supports_heads: ClassVar[bool] = False

    def __init__(
        self,
        cfg: DistillConfig,
        student: nn.Module,
        student_spec: Any,
        teachers: Sequence[TeacherRef] = (),
        *,
        tap_factory: Optional[TapFactory] = None,
        teacher_cache: Optional[TeacherCache] = None,
        heads: Optional[HeadLayout] = None,
    ) -> None:
        super().__init__()
        if heads is not None and not self.supports_heads:
            raise ValueError(f"method {self.name!r} has no multi-head form (heads {heads.as_dict()}); methods with "
                             f"one: {', '.join(n for n in DISTILLERS.names() if DISTILLERS.get(n).supports_heads)}")
        self.heads = heads
        self.cfg = cfg
        self.teacher_cache = teacher_cache
        self.student = student
        self.student_spec = student_spec
        self._tap_factory = tap_factory
        refs = list(teachers)
        names = [t.name for t in refs]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        self.teacher_names = names
        self.teacher_roles = {t.name: t.role for t in refs}
        self.teacher_specs = {t.name: t.spec for t in refs}
        self.teachers = nn.ModuleDict({t.name: t.model for t in refs if t.model is not None})
        self.teachers.requires_grad_(False)
        self.teachers.eval()
        self.active_teachers: list[str] = []
        self.feature_teachers: set[str] = set()
        self.needs_student_features = False
        self.epoch: Optional[int] = None

    # ----- what subclasses implement -------------------------------------------------------
    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> dict[str, tuple[float, Tensor]]:
        """name -> (weight, unweighted loss); the total adds weight * loss to CE."""
        return {}

    def logit_term(self, loss: Any, student_logits: Tensor, teacher_logits: Sequence[Tensor], *args: Any,
                   target: Optional[Tensor] = None) -> Tensor:
        """``loss(student_logits, teacher_logits, *args[, target=target])``, or with heads the sum
        over heads of it on each head's slice, ``target`` decoded per head
        (dtkd.distill.losses.heads.per_head)."""
        if self.heads is None:
            return loss(student_logits, list(teacher_logits), *args, **({} if target is None else {"target": target}))
        return per_head(loss, self.heads, student_logits, teacher_logits, *args, target=target)

    # ----- teachers ------------------------------------------------------------------------
    def teacher_with_role(self, role: str) -> str:
        for name in self.teacher_names:
            if self.teacher_roles[name] == role:
                return name
        have = ", ".join(f"{n} ({self.teacher_roles[n]})" for n in self.teacher_names) or "none"
        raise ValueError(f"method {self.name!r} needs a teacher with role {role!r}; got: {have}")

    def _use_teachers(self, names: Iterable[str], features: bool) -> None:
        for n in names:
            if n not in self.active_teachers:
                self.active_teachers.append(n)
            if features:
                self.feature_teachers.add(n)

    def train(self, mode: bool = True) -> "Distiller":
        """Teachers stay in eval mode whatever the mode: their BN statistics never move."""
        super().train(mode)
        self.teachers.eval()
        return self

    def _run(self, model: nn.Module, spec: Any, x: Tensor, features: bool, who: str) -> tuple[Tensor, Optional[Tensor]]:
        """Logits and, if asked, the tapped 5-D map. The hook lives only for this call, so the
        student carries no hook (and no captured tensor) outside the distiller."""
        if not features:
            return model(x), None
        tap = (self._tap_factory or default_tap_factory())(model, spec)
        try:
            logits = model(x)
            feat = tap.features
        finally:
            tap.remove()
        if feat is None or feat.dim() != 5:
            raise RuntimeError(f"{who}: feature tap {getattr(spec, 'tap', '?')!r} gave no 5-D map")
        expected = getattr(spec, "feature_dim", None)
        if isinstance(expected, int) and feat.shape[1] != expected:
            raise ValueError(
                f"{who}: spec.feature_dim={expected} but the tapped map {getattr(spec, 'tap', '?')!r} "
                f"has {feat.shape[1]} channels"
            )
        return logits, feat

    @staticmethod
    def _view(batch_inputs: Mapping[str, Tensor], name: str) -> Tensor:
        try:
            return batch_inputs[name]
        except KeyError:
            raise KeyError(f"batch_inputs has no view {name!r}; views: {sorted(batch_inputs)}") from None

    @torch.no_grad()
    def teacher_forward(
        self, batch_inputs: Mapping[str, Tensor], names: Optional[Sequence[str]] = None, features: bool = True
    ) -> TeacherOutputs:
        """Run teachers on their views: name -> {"logits", "features"} (no gradient).

        The code path ``forward`` uses, so a teacher cache can be built with it. ``names``
        defaults to the teachers this method uses; ``features=False`` skips the feature maps.
        """
        out: TeacherOutputs = {}
        for name in self.active_teachers if names is None else names:
            if name not in self.teachers:
                raise RuntimeError(f"teacher {name!r} has no model; pass its outputs in teacher_outputs")
            x = self._view(batch_inputs, name)
            logits, feat = self._run(self.teachers[name], self.teacher_specs[name], x, features, f"teacher {name!r}")
            out[name] = {"logits": logits} if feat is None else {"logits": logits, "features": feat}
        return out

    def _gather_teachers(
        self,
        batch_inputs: Mapping[str, Tensor],
        teacher_outputs: Optional[Mapping[str, Mapping[str, Tensor]]],
        device: torch.device,
        names: Optional[Sequence[str]] = None,
    ) -> TeacherOutputs:
        """Cached outputs where given, live teacher forwards for the rest."""
        out: TeacherOutputs = {}
        run_feat: list[str] = []
        run_plain: list[str] = []
        for name in self.active_teachers if names is None else names:
            need_feat = name in self.feature_teachers
            cached = teacher_outputs.get(name) if teacher_outputs else None
            if cached is None:
                (run_feat if need_feat else run_plain).append(name)
                continue
            missing = [k for k in ("logits", "features") if k not in cached and (k == "logits" or need_feat)]
            if missing:
                raise KeyError(f"teacher_outputs[{name!r}] lacks {missing}")
            out[name] = {k: v.to(device, non_blocking=True) for k, v in cached.items() if k in ("logits", "features")}
        if run_feat:
            out.update(self.teacher_forward(batch_inputs, run_feat, features=True))
        if run_plain:
            out.update(self.teacher_forward(batch_inputs, run_plain, features=False))
        return out

    # ----- training interface --------------------------------------------------------------
    def forward(
        self,
        batch_inputs: Mapping[str, Tensor],
        target: Tensor,
        teacher_outputs: Optional[Mapping[str, Mapping[str, Tensor]]] = None,
    ) -> DistillOutput:
        x = self._view(batch_inputs, STUDENT_VIEW)
        logits, feat = self._run(self.student, self.student_spec, x, self.needs_student_features, "student")
        teachers = self._gather_teachers(batch_inputs, teacher_outputs, logits.device) if self.active_teachers else {}
        if self.heads is None:
            ce = labelled_cross_entropy(logits, target, self.cfg.label_smoothing)
        else:
            ce = multihead_cross_entropy(logits, target, self.heads, self.cfg.label_smoothing)
        terms = self.distill_terms(logits, feat, teachers, target)
        loss = ce
        for weight, value in terms.values():
            loss = loss + weight * value
        losses = {"ce": ce.detach(), **{k: v.detach() for k, (_, v) in terms.items()}}
        return DistillOutput(logits=logits, losses=losses, loss=loss)

    def setup(self, data: SeededViews, ctx: RunContext) -> TrainPlan:
        """Before the first step: the teacher cache when one is given or configured (then only the
        student's view is rendered for training; a method without teachers still draws the same
        ``teacher_cache_views`` fixed views per clip), and the one-off ``prepare`` fit on a fresh
        run (a resumed run's checkpoint holds what it fitted)."""
        plan = TrainPlan(data)
        if self.active_teachers and (self.teacher_cache is not None or self.cfg.teacher_cache_views):
            plan = cached_plan(self, data, ctx, self.cfg.teacher_cache_views, cache=self.teacher_cache)
        elif self.cfg.teacher_cache_views:
            # No teacher to cache (the CE baseline of a comparison): the same N fixed views per clip
            # as every cached row, so that the rows differ in the loss and nothing else.
            plan = TrainPlan(data, num_views=self.cfg.teacher_cache_views)
        if self.needs_prepare and not ctx.resumed:
            try:
                log.info("distiller.prepare: %s", self.prepare(self._prepare_batches(plan, ctx)))
            except BaseException:
                plan.close()
                raise
        return plan

    def _prepare_batches(self, plan: TrainPlan, ctx: RunContext) -> Iterable[Any]:
        """Views 0..P-1 of this rank's share of the training clips (P = ``cfg.prepare_views``: by
        default every cached view, i.e. exactly the views the student trains on; ``prepare`` sums
        its statistics over ranks), with cached teacher outputs where there are. Without a cache,
        2 views: a fit on the views of one epoch only would fit part of their residual away."""
        wanted = self.cfg.prepare_views
        num_views = (wanted or 2) if plan.num_views is None else min(wanted or plan.num_views, plan.num_views)
        info = D.current()
        shard = range(info.rank, len(plan.data), info.world_size)
        keys = [ViewKey(i, v) for v in range(num_views) for i in shard]
        loader = DataLoader(plan.data, batch_size=ctx.batch_size, sampler=keys,
                            **{**ctx.loader_kwargs, "persistent_workers": False})
        if plan.extras is None:
            return loader
        return ({**batch, **plan.extras(batch)} for batch in loader)

    def prepare(self, loader: Iterable[Any], max_batches: Optional[int] = None) -> dict[str, float]:
        """One-off fitting before training (closed-form phi for DT-KD); returns fit statistics."""
        return {}

    @property
    def needs_prepare(self) -> bool:
        """True while ``prepare(loader)`` must still run before the first training step."""
        return False

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to run (DKD's warm-up uses it)."""
        self.epoch = int(epoch)

    def epoch_diagnostics(self) -> dict[str, Any]:
        """{"scalars": {name: float}, "histograms": {name: {"edges", "counts"}}}, then reset."""
        return {"scalars": {}, "histograms": {}}

    # ----- parameters and state ------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student + training-only heads; never a teacher parameter."""
        return [p for n, p in self.named_parameters() if not n.startswith("teachers.") and p.requires_grad]

    def training_state_dict(self) -> dict[str, Tensor]:
        """Everything needed to resume (student, heads, fitted phi) without the teachers."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teachers.")}

    def load_training_state_dict(self, state: Mapping[str, Tensor]) -> None:
        result = self.load_state_dict(dict(state), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("teachers.")]
        if missing or result.unexpected_keys:
            raise KeyError(f"training state does not fit this distiller: missing {missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")


def labelled_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """CE averaged over the labelled clips of the batch; target -1 marks a clip of the unlabelled
    transfer set, which only the teacher terms see (0 for a batch with no label at all, not NaN)."""
    labelled = target >= 0
    if bool(labelled.all()):
        return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    if not bool(labelled.any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits[labelled].float(), target[labelled], label_smoothing=label_smoothing)


def build_distiller(
    cfg: DistillConfig | Mapping[str, Any],
    student: nn.Module,
    student_spec: Any,
    teachers: Sequence[TeacherRef] = (),
    *,
    tap_factory: Optional[TapFactory] = None,
    teacher_cache: Optional[TeacherCache] = None,
    heads: Optional[HeadLayout] = None,
) -> Distiller:
    """The registered Distiller named by ``cfg.method``, built around the given models.

    ``tap_factory(model, spec)`` defaults to ``dtkd.models.FeatureTap``; tests may pass their own.
    ``heads``: multi-head models (see :class:`Distiller`); None: single-label, as before.
    """
    if not isinstance(cfg, DistillConfig):
        cfg = DistillConfig.model_validate(cfg)
    cls = DISTILLERS.get(cfg.method)
    kwargs = {} if heads is None else {"heads": heads}
    return cls(cfg, student, student_spec, teachers, tap_factory=tap_factory, teacher_cache=teacher_cache, **kwargs)
