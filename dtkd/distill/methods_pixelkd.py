"""Pixel distillation (Guo et al. 2024, TPAMI), registered as ``pixelkd``: a low-resolution student
learns from a full-resolution teacher with logit KD and input spatial representation distillation.

Total loss (the one-stage, teacher-student "ISRD" setting of the paper and its released code):

    CE + pixelkd_kd_weight * KD_tau(z_S(I_small), z_T(I_large))
       + pixelkd_isrd_weight * mean | D(f_S^in(I_small)) - I_large |

f_S^in is the output of the student's input module (``pixelkd_stage``; X3D: ``blocks.0.conv``,
the stem's convolutions before its BN, as the code's first-conv feature), D the training-only
decoder of :mod:`dtkd.distill.losses.pixelkd` (1x1x1 conv -> per-frame pixel shuffle -> PReLU),
I_large the clip the teacher sees (its view, ``pixelkd_hr_view``), aligned to the student's
frames and normalisation. KD_tau is Hinton KD at ``tau``.

Where the low resolution comes from, and why evaluation needs no change: the student's input IS
its view. Every dtkd view of one clip is cut from the same window, crop box and flip and resized
(antialiased, per frame, time untouched) to its own ``crop_size``
(``dtkd.data.transforms.render_view``), so a student view with ``crop_size`` = ``pixelkd_scale``
x the teacher's is exactly the paper's I_small = resize(I_large). The stage config sets it
(``student.crop_size``), and then every place that runs the student (``Trainer.validate``,
``Job.evaluate``, ``steps/evaluate.py``, the registry's ``input_spec``, export and packaging) feeds
it the small clips with no change to the engine; resizing inside the distiller instead would
train at the small size and test at the large one. ``pixelkd_scale`` sizes the decoder (s =
ceil(stem stride / scale)) and is checked against the two views' sizes at every step: a config
that forgot to shrink the student's view fails with the crop size to set.

Left out: the teacher-assistant-student (TAS) two-stage framework. It needs an assistant (the
student's architecture on large images, distilled from the teacher first) trained in a separate
run, and then distils the assistant's intermediate features into the small-input student; dtkd's
distill stage takes frozen teachers by role only, and the authors' code has not released TAS for
classification either (its README's to-do list). The object-detection AFP strategy does not
apply. ``distiller.student`` stays the plain student; the decoder lives in ``distiller.isrd``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from dtkd.data.views import STUDENT_VIEW
from dtkd.engine.contract import RunContext, TrainPlan
from dtkd.models.taps import ModuleOutputs

from .distiller import DistillOutput, TeacherOutputs
from .losses.kd import kd_loss
from .losses.pixelkd import ISRDLoss, isrd_target, upsampling_factor
from .methods import Terms, _SingleTeacher
from .registry import DISTILLERS

# The input module per student family (module whose output the ISRD decoder reads). X3D
# (pytorchvideo): blocks.0 is the stem, blocks.0.conv its (2+1)-D convolutions before the BN.
DEFAULT_STAGES: dict[str, str] = {"x3d": "blocks.0.conv"}


def default_pixelkd_stage(spec: Any) -> str:
    """The input-module name of a student family (by ``spec.name`` prefix), or a ValueError."""
    name = str(getattr(spec, "name", ""))
    for prefix, stage in DEFAULT_STAGES.items():
        if name.startswith(prefix):
            return stage
    raise ValueError(
        f"pixelkd: no default input module for student {name!r} (defaults exist for: {', '.join(DEFAULT_STAGES)}); "
        "set distill.pixelkd_stage to the module name of its first convolution (a 5-D map), e.g. 'stem'"
    )


def _norm(spec: Any) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
    mean, std = getattr(spec, "mean", None), getattr(spec, "std", None)
    return (tuple(mean), tuple(std)) if mean is not None and std is not None else None


@DISTILLERS.register("pixelkd")
class PixelKD(_SingleTeacher):
    """Pixel distillation, one stage: CE + pixelkd_kd_weight * KD + pixelkd_isrd_weight * L_ISRD.

    The student's view must be ``pixelkd_scale`` x the large view's size in H and W (set the
    student's ``crop_size`` in the stage config); the large view (default: the baseline
    teacher's) is the ISRD target. The decoder is sized by one probe forward of the student
    (eval mode, no grad, batch 1, ``student_spec.input_shape``) at construction.
    """

    name = "pixelkd"
    uses_features = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Distiller's arguments
        super().__init__(*args, **kwargs)
        c = self.cfg
        self.stage_name = c.pixelkd_stage if c.pixelkd_stage is not None else default_pixelkd_stage(self.student_spec)
        self.hr_view = c.pixelkd_hr_view if c.pixelkd_hr_view is not None else self.teacher_name
        if self.hr_view == STUDENT_VIEW:
            raise ValueError(f"pixelkd: pixelkd_hr_view cannot be the student's own view {STUDENT_VIEW!r}: the "
                             "ISRD target is the large clip (a teacher's view)")
        self.use_isrd = c.pixelkd_isrd_weight > 0
        channels, stride = self._probe()
        self.factor = upsampling_factor(stride, c.pixelkd_scale)
        self.isrd = ISRDLoss(channels, self.factor)
        self._norm_from = _norm(self.teacher_specs.get(self.hr_view))
        self._norm_to = _norm(self.student_spec)
        self._hook: Optional[ModuleOutputs] = None
        self._large: Optional[Tensor] = None
        self._frames = 0

    @torch.no_grad()
    def _probe(self) -> tuple[int, float]:
        """(channels, spatial stride) of the input module, from one forward at the spec's input."""
        shape = getattr(self.student_spec, "input_shape", None)
        if shape is None:
            raise ValueError("pixelkd: the student spec has no input_shape (C, T, H, W) to size the ISRD decoder with")
        param = next(self.student.parameters(), None)
        x = torch.zeros(1, *shape, device=param.device if param is not None else torch.device("cpu"))
        was_training = self.student.training
        self.student.eval()
        try:
            with ModuleOutputs(self.student, [self.stage_name], who="pixelkd", key="distill.pixelkd_stage") as hook:
                self.student(x)
        finally:
            self.student.train(was_training)
        if self.stage_name not in hook.outputs:
            raise ValueError(f"pixelkd: module {self.stage_name!r} did not run in the student's forward")
        _, c, _, h, w = hook.outputs[self.stage_name].shape
        sh, sw = shape[2] / h, shape[3] / w
        if abs(sh - sw) > 1e-6:
            raise ValueError(f"pixelkd: module {self.stage_name!r} has different strides in H and W ({sh}, {sw})")
        return int(c), float(sh)

    def _check_sizes(self, small: Tensor, large: Tensor) -> None:
        """The student's clip must be ``pixelkd_scale`` x the large clip in H and W (+-1 pixel)."""
        scale = self.cfg.pixelkd_scale
        (h, w), (hl, wl) = small.shape[-2:], large.shape[-2:]
        if abs(h - scale * hl) > 1 or abs(w - scale * wl) > 1:
            raise ValueError(
                f"pixelkd: the student's clips are {h}x{w} and the large view {self.hr_view!r} {hl}x{wl}, a ratio of "
                f"{h / hl:.3g}, not pixelkd_scale = {scale}. The student's view is its deployed input (validation, "
                f"test and export use it): set the student's crop_size to {round(scale * hl)} in the stage config, "
                "or pixelkd_scale to the ratio you meant"
            )

    # ----- training ------------------------------------------------------------------------
    def setup(self, data: Any, ctx: RunContext) -> TrainPlan:
        """The base setup; with cached teachers (the plan renders the student's view only) the
        large view is rendered too: it is the ISRD target, not only the teacher's input."""
        plan = super().setup(data, ctx)
        if self.use_isrd and plan.extras is not None and hasattr(data, "with_views"):
            plan.data = data.with_views([STUDENT_VIEW, self.hr_view])
        return plan

    def forward(
        self,
        batch_inputs: Mapping[str, Tensor],
        target: Tensor,
        teacher_outputs: Optional[Mapping[str, Mapping[str, Tensor]]] = None,
    ) -> DistillOutput:
        """The base forward with the input-module hook alive for this call only."""
        if not self.use_isrd:
            return super().forward(batch_inputs, target, teacher_outputs)
        small = self._view(batch_inputs, STUDENT_VIEW)
        if self.hr_view not in batch_inputs:
            raise KeyError(f"pixelkd: the batch has no large view {self.hr_view!r} (the ISRD target); "
                           f"views: {sorted(batch_inputs)}")
        large = batch_inputs[self.hr_view]
        self._check_sizes(small, large)
        with ModuleOutputs(self.student, [self.stage_name], who="pixelkd", key="distill.pixelkd_stage") as hook:
            self._hook, self._large, self._frames = hook, large, small.shape[2]
            try:
                return super().forward(batch_inputs, target, teacher_outputs)
            finally:
                self._hook, self._large = None, None

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        c = self.cfg
        terms: Terms = {"kd": (c.pixelkd_kd_weight, kd_loss(logits, teachers[self.teacher_name]["logits"], c.tau))}
        if self.use_isrd:
            if self._hook is None or self.stage_name not in self._hook.outputs or self._large is None:
                raise RuntimeError("pixelkd: no input-module output captured; call the distiller, not distill_terms")
            goal = isrd_target(self._large, self._frames, self._norm_from, self._norm_to)
            terms["isrd"] = (c.pixelkd_isrd_weight, self.isrd(self._hook.outputs[self.stage_name], goal))
        return terms
