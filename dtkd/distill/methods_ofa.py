"""OFA-KD (Hao et al. 2023, NeurIPS), registered as ``ofa``: per-stage exit branches + the OFA loss.

The student gets one training-only *exit branch* per chosen stage that maps the stage's output
into logit space; every exit and the student's own logits learn from one teacher's logits with
the OFA loss (:func:`dtkd.distill.losses.ofa.ofa_loss`). Total loss:

    CE + ofa_final_weight * L_OFA(z_S) + ofa_weight * sum_i L_OFA(exit_i(f_S^i))

The stage outputs are read with forward hooks that live only for one distiller forward (as the
feature tap): ``distiller.student`` stays the plain student, the exits live in
``distiller.exits`` and are never part of it (like MGD's generator or DT-KD's SDB).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from dtkd.models.taps import ModuleOutputs

from .distiller import DistillOutput, TeacherOutputs
from .losses.ofa import OFALoss
from .methods import Terms, _SingleTeacher
from .registry import DISTILLERS

# Default exit stages per student family (module names of the stage outputs). X3D (pytorchvideo):
# blocks.0 is the stem, blocks.1-4 the four res stages, blocks.5 the head; the exits sit on the
# stages before the last (the last stage's exit would be a second head on the same map).
DEFAULT_STAGES: dict[str, tuple[str, ...]] = {"x3d": ("blocks.1", "blocks.2", "blocks.3")}


def default_ofa_stages(spec: Any) -> list[str]:
    """The exit stages of a student family (by ``spec.name`` prefix), or a ValueError."""
    name = str(getattr(spec, "name", ""))
    for prefix, stages in DEFAULT_STAGES.items():
        if name.startswith(prefix):
            return list(stages)
    raise ValueError(
        f"ofa: no default exit stages for student {name!r} (defaults exist for: {', '.join(DEFAULT_STAGES)}); "
        "set distill.ofa_stages to the module names of its stage outputs (5-D maps), e.g. ['layer1', 'layer2']"
    )


class SepConv3d(nn.Sequential):
    """Depthwise-separable 3-D block, twice: (dw k^3, stride) -> pw -> BN -> ReLU -> (dw k^3) -> pw -> BN -> ReLU.

    The "SepConv" of OFA's CNN exits (from DARTS), in 3-D: the first depthwise conv carries the
    stride, the second pointwise conv changes the channels.
    """

    def __init__(self, c_in: int, c_out: int, stride: Sequence[int] = (1, 2, 2), kernel_size: int = 3) -> None:
        pad = kernel_size // 2
        super().__init__(
            nn.Conv3d(c_in, c_in, kernel_size, tuple(stride), pad, groups=c_in, bias=False),
            nn.Conv3d(c_in, c_in, 1, bias=False),
            nn.BatchNorm3d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_in, c_in, kernel_size, 1, pad, groups=c_in, bias=False),
            nn.Conv3d(c_in, c_out, 1, bias=False),
            nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True),
        )


class OFAExit(nn.Module):
    """One exit branch: ``n_down`` SepConv3d blocks (spatial stride 2, channels doubled, the last to
    ``embed_dim``; a 1x1x1 conv when ``n_down`` = 0) -> global average pool -> linear classifier."""

    def __init__(self, c_in: int, embed_dim: int, num_classes: int, n_down: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c = c_in
        for i in range(n_down):
            c_next = embed_dim if i == n_down - 1 else 2 * c
            blocks.append(SepConv3d(c, c_next))
            c = c_next
        if n_down == 0:
            blocks.append(nn.Conv3d(c, embed_dim, 1))
        self.body = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(embed_dim, num_classes)
        self.n_down = n_down

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


@DISTILLERS.register("ofa")
class OFA(_SingleTeacher):
    """OFA-KD: CE + ofa_final_weight * L_OFA(student logits) + ofa_weight * sum over exits of L_OFA.

    Exits (:class:`OFAExit`) sit on ``cfg.ofa_stages`` (default: the stages before the last of an
    X3D student). Their sizes come from one probe forward of the student (eval mode, no grad,
    batch 1, ``student_spec.input_shape``) at construction: each exit has as many stride-2 blocks
    as the spatial halvings between its stage and the student's tapped last map, and ends in
    ``max(C_S, C_T)`` channels (the feature dims of the student's and the teacher's specs).
    CNN students only: OFA's ViT exits are transformer blocks on tokens, which dtkd lacks.
    """

    name = "ofa"
    uses_features = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Distiller's arguments
        super().__init__(*args, **kwargs)
        c = self.cfg
        if c.transfer_set:
            raise ValueError("ofa: the OFA loss needs the label of every clip; transfer_set must be false")
        if getattr(self.student_spec, "family", "cnn") != "cnn":
            raise ValueError(
                f"ofa: student {getattr(self.student_spec, 'name', '?')!r} is a ViT; dtkd's OFA exits are 3-D conv "
                "branches for CNN students (the paper's ViT exits, transformer blocks on tokens, are not implemented)"
            )
        self.stage_names = list(c.ofa_stages) if c.ofa_stages is not None else default_ofa_stages(self.student_spec)
        if not self.stage_names:
            raise ValueError("ofa: ofa_stages is empty; give at least one student stage for an exit")
        self.ofa = OFALoss(c.ofa_eps, c.ofa_tau, c.ofa_variant)
        self.exits = self._build_exits()
        self._stages: dict[str, Tensor] = {}
        self._exit_sums: dict[str, Tensor] = {}  # detached running sums (no device sync per step)
        self._exit_count = 0

    # ----- exits -------------------------------------------------------------------------
    def _embed_dim(self) -> int:
        specs = (self.student_spec, self.teacher_specs[self.teacher_name])
        dims = [d for d in (getattr(s, "feature_dim", None) for s in specs) if isinstance(d, int) and d > 0]
        if not dims:
            raise ValueError("ofa: neither the student's nor the teacher's spec gives feature_dim (exit width)")
        return max(dims)

    @torch.no_grad()
    def _exits_hooked(self) -> ModuleOutputs:
        """The exits' stage outputs of the student, for one ``with`` block."""
        return ModuleOutputs(self.student, self.stage_names, who="ofa", key="distill.ofa_stages")

    def _probe(self) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...], int]:
        """Stage output shapes, the tapped last map's shape and the class count, from one forward."""
        shape = getattr(self.student_spec, "input_shape", None)
        if shape is None:
            raise ValueError("ofa: the student spec has no input_shape (C, T, H, W) to size the exits with")
        tap = getattr(self.student_spec, "tap", None)
        if tap is None:
            raise ValueError("ofa: the student spec has no tap (its last feature map) to size the exits with")
        param = next(self.student.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(1, *shape, device=device)
        was_training = self.student.training
        self.student.eval()
        try:
            with self._exits_hooked() as stages, ModuleOutputs(
                self.student, [tap], layout=getattr(self.student_spec, "tap_layout", "ncthw"), who="ofa",
                key="the student spec's tap"
            ) as last:
                logits = self.student(x)
        finally:
            self.student.train(was_training)
        missing = [n for n in self.stage_names if n not in stages.outputs]
        if missing:
            raise ValueError(f"ofa: stage(s) {missing} did not run in the student's forward")
        return ({n: tuple(v.shape) for n, v in stages.outputs.items()}, tuple(last.outputs[tap].shape),
                int(logits.shape[-1]))

    def _build_exits(self) -> nn.ModuleList:
        shapes, last, num_classes = self._probe()
        embed = self._embed_dim()
        exits = []
        for name in self.stage_names:
            s = shapes[name]
            ratio = max(s[3] / last[3], s[4] / last[4], 1.0)
            exits.append(OFAExit(s[1], embed, num_classes, n_down=int(round(math.log2(ratio)))))
        return nn.ModuleList(exits)

    # ----- training ------------------------------------------------------------------------
    def forward(
        self,
        batch_inputs: Mapping[str, Tensor],
        target: Tensor,
        teacher_outputs: Optional[Mapping[str, Mapping[str, Tensor]]] = None,
    ) -> DistillOutput:
        """The base forward with the stage hooks alive for this call only (the student keeps none)."""
        with self._exits_hooked() as hooks:
            self._stages = hooks.outputs
            try:
                return super().forward(batch_inputs, target, teacher_outputs)
            finally:
                self._stages = {}

    def distill_terms(
        self, logits: Tensor, features: Optional[Tensor], teachers: TeacherOutputs, target: Tensor
    ) -> Terms:
        z_t = teachers[self.teacher_name]["logits"]
        stages = self._stages
        missing = [n for n in self.stage_names if n not in stages]
        if missing:
            raise RuntimeError(f"ofa: no output captured for stage(s) {missing}; call the distiller, not distill_terms")
        per_exit = [self.ofa(exit_(stages[n]), z_t, target) for n, exit_ in zip(self.stage_names, self.exits)]
        if self.training:
            for n, v in zip(self.stage_names, per_exit):
                self._exit_sums[n] = self._exit_sums[n] + v.detach() if n in self._exit_sums else v.detach()
            self._exit_count += 1
        return {
            "ofa": (self.cfg.ofa_final_weight, self.ofa(logits, z_t, target)),
            "ofa_exits": (self.cfg.ofa_weight, torch.stack(per_exit).sum()),
        }

    def epoch_diagnostics(self) -> dict[str, Any]:
        """Mean OFA loss of every exit over the epoch's training steps (``ofa/exit/<stage>``), then reset."""
        n_steps = self._exit_count
        scalars = {f"ofa/exit/{n}": float(s) / n_steps for n, s in self._exit_sums.items()} if n_steps else {}
        self._exit_sums, self._exit_count = {}, 0
        return {"scalars": scalars, "histograms": {}}
