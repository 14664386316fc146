"""The student outside PyTorch: TorchScript and ONNX files, a parity check against the eager model
on real clips, and CPU latency of each format under one protocol (docs/export.md).

* :func:`export_torchscript` traces the model (``torch.jit.trace``) and saves it; it needs torch
  alone. TorchScript is deprecated in torch 2.14 (``FutureWarning`` on trace/save/load, silenced
  here) but is still what C++/LibTorch and older mobile runtimes load.
* :func:`export_onnx` uses torch's default exporter (``torch.export`` -> ONNX through onnxscript)
  at :data:`DEFAULT_OPSET` with a dynamic batch axis, one self-contained file. onnx, onnxscript
  and onnxruntime are imported inside the functions: the core library still imports (and trains)
  on a machine with torch alone; ``pip install -e ".[export]"`` brings them.
* :func:`parity` runs the reference and the exported model on the same clips and reports the max
  abs logit difference and the top-1 agreement (a multi-head model: each head's, and the clips
  whose every head agrees, which is what must pass); :meth:`Parity.check` raises :class:`ParityError`
  with those figures when they are outside the tolerance, so an export that predicts differently
  never ships silently.
* :func:`latency_ms` times every format on one batch-1 clip, interleaved after a warm-up, torch
  at a fixed thread count (:func:`~dtkd.eval.complexity.fixed_threads`), onnxruntime with its
  session's ``intra_op_num_threads`` set to the same count; medians per format.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from dtkd.data.heads import HeadLayout
from dtkd.eval.complexity import latency_ms as interleaved_latency_ms

# torchlib (onnxscript's ATen -> ONNX library) is written at opset 18: asking for it means no
# version conversion pass; onnxruntime >= 1.14 runs it.
DEFAULT_OPSET = 18
# Max abs logit difference an fp32 export may show against the eager model: the same bound as the
# registry's pt2 check (dtkd_ops.packaging.MAX_ABS_DIFF); measured ~1e-6 on X3D-S (docs/export.md).
DEFAULT_ATOL = 1e-4
DEFAULT_MIN_AGREEMENT = 1.0  # every clip's top-1 must agree
INPUT_NAME, OUTPUT_NAME = "clips", "logits"
# torch.export specialises a size-1 dimension to a constant: the ONNX trace runs at batch >= 2 so
# the batch axis stays symbolic.
_TRACE_BATCH = 2

PathLike = Union[str, Path]


class ParityError(RuntimeError):
    """An exported model whose logits or top-1 differ from the eager model's beyond tolerance."""


class ExportError(RuntimeError):
    """A model that could not be exported, or an export file that does not load."""


@dataclass(frozen=True)
class Parity:
    """How closely ``format`` reproduces the reference on ``n`` clips. A multi-head model's
    ``top1_agreement`` counts the clips whose top-1 agrees in every head; ``head_agreement`` has
    each head's alone (empty for one head)."""

    format: str
    n: int
    max_abs_diff: float
    top1_agreement: float
    atol: float = DEFAULT_ATOL
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    head_agreement: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        # `not >` so that a NaN difference fails
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_agreement

    def check(self) -> "Parity":
        """Self when within tolerance, else :class:`ParityError` naming the figures."""
        if not self.ok:
            heads = "".join(f", {h} {a:.4f}" for h, a in self.head_agreement.items())
            raise ParityError(
                f"{self.format} export does not reproduce the PyTorch model on {self.n} clips: max abs "
                f"logit difference {self.max_abs_diff:.3g} (tolerance {self.atol:g}), top-1 agreement "
                f"{self.top1_agreement:.4f}{heads} (required >= {self.min_agreement:g})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ----------------------------------------------------------------------------- export


def _eval_copy(model: nn.Module) -> nn.Module:
    """A CPU eval-mode copy: exporting must leave the caller's module (device, mode) as it was."""
    return copy.deepcopy(model).cpu().eval()


def _example(example: torch.Tensor) -> torch.Tensor:
    example = _flat(torch.as_tensor(example).detach().float().cpu())
    if example.dim() != 5:
        raise ValueError(f"example must be a (batch, 3, frames, height, width) clip batch (or the test "
                         f"loader's (batch, views, 3, frames, height, width)), got {tuple(example.shape)}")
    if example.shape[0] < _TRACE_BATCH:
        example = example.repeat(_TRACE_BATCH, 1, 1, 1, 1)
    return example[:_TRACE_BATCH]


def export_torchscript(model: nn.Module, example: torch.Tensor, path: PathLike) -> Path:
    """Trace ``model`` on ``example`` (clips at the model's view) into a TorchScript file.

    Tracing records the ops run on the example; dtkd's zoo models have no data-dependent control
    flow, and the batch size stays free (checked by the tests at batch 1 and 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.* is deprecated"
        traced = torch.jit.trace(_eval_copy(model), _example(example), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def load_torchscript(path: PathLike) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def export_onnx(model: nn.Module, example: torch.Tensor, path: PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` to one ONNX file at ``opset`` with input ``clips`` (batch, 3, T, H, W)
    and output ``logits`` (batch, classes), the batch axis dynamic; checked with ``onnx.checker``.

    torch 2.14's exporter (``dynamo=True``, the default; the TorchScript-based one is deprecated)
    needs ``onnxscript``: ``pip install -e ".[export]"``."""
    _require("onnx", "onnxscript")
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    progress = io.StringIO()  # the exporter prints its stages to stdout; kept for the error message
    args = (_example(example),)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(progress):
            torch.onnx.export(_eval_copy(model), args, str(path), dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; name the model and cause
        raise ExportError(f"ONNX export of {type(model).__name__} failed at opset {opset}: "
                          f"{type(err).__name__}: {err}\n{progress.getvalue()[-2000:]}") from err
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    written = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    if written != {opset}:
        raise ExportError(f"{path}: asked for opset {opset}, the file declares {sorted(written)}")
    return path


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export/runtime needs {', '.join(missing)}, not installed: "
                          f"pip install -e \".[export]\" (docs/export.md)")


class OnnxModel:
    """An ONNX file run by onnxruntime on CPU, called like a module: clips tensor in, logits
    tensor out. ``threads`` fixes ``intra_op_num_threads`` (and one inter-op thread) for the
    session's lifetime: ORT's default is one thread per core, which would time it on more cores
    than PyTorch."""

    def __init__(self, path: PathLike, *, threads: int = 1):
        _require("onnxruntime")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path, self.threads = Path(path), int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise ExportError(f"onnxruntime cannot load {path}: {err}") from err
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        array = clips.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def eval(self) -> "OnnxModel":  # so callers may treat every format alike
        return self


# ----------------------------------------------------------------------------- parity


Predictor = Callable[[torch.Tensor], torch.Tensor]


def _flat(clips: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) as is; (B, V, C, T, H, W) multi-view test batches as B*V clips."""
    return clips.flatten(0, 1) if clips.dim() == 6 else clips


def _agreeing(got: torch.Tensor, want: torch.Tensor, heads: Optional[HeadLayout]) -> dict[str, torch.Tensor]:
    """Per clip, whether the top-1 agrees: ``{"": ...}`` for one head, else per head and ``""``
    for every head at once."""
    if heads is None:
        return {"": got.argmax(1) == want.argmax(1)}
    per_head = {h: g.argmax(1) == w.argmax(1) for (h, g), w in zip(heads.split(got).items(), heads.split(want).values())}
    return {**per_head, "": torch.stack(list(per_head.values())).all(0)}


def parity(reference: Predictor, candidate: Predictor, batches: Iterable[torch.Tensor], *, format: str,
           atol: float = DEFAULT_ATOL, min_agreement: float = DEFAULT_MIN_AGREEMENT,
           heads: Optional[HeadLayout] = None) -> Parity:
    """Run both on every clip of ``batches`` (clip tensors; multi-view batches count each view)
    and compare: the max abs logit difference over all clips and classes, and the fraction of
    clips whose top-1 class agrees (``heads``, a multi-head model's layout: in every head, with
    each head's fraction beside it). Does not raise: call :meth:`Parity.check`."""
    if isinstance(reference, nn.Module):
        reference.eval()
    worst, agree, n = 0.0, {}, 0
    with torch.inference_mode():
        for clips in batches:
            clips = _flat(torch.as_tensor(clips).float().cpu())
            want, got = reference(clips).float(), candidate(clips).float()
            if tuple(got.shape) != tuple(want.shape):
                raise ParityError(f"{format} export returns {tuple(got.shape)} for {clips.shape[0]} clips, "
                                  f"PyTorch {tuple(want.shape)} (is the batch axis dynamic?)")
            diff = float((got - want).abs().max()) if got.numel() else 0.0
            worst = diff if diff != diff else max(worst, diff)  # keep a NaN: it must fail
            for head, hits in _agreeing(got, want, heads).items():
                agree[head] = agree.get(head, 0) + int(hits.sum())
            n += clips.shape[0]
    if n == 0:
        raise ValueError("parity needs at least one clip; the batches were empty")
    per_head = {h: agree[h] / n for h in (heads.names if heads else ())}
    return Parity(format, n, worst, agree[""] / n, atol, min_agreement, per_head)


# ----------------------------------------------------------------------------- latency


def latency_ms(models: Mapping[str, Predictor], clip_shape: Iterable[int], *, threads: int = 1, warmup: int = 3,
               repeats: int = 10) -> dict[str, float]:
    """Median milliseconds of one forward per format, on one zero clip of ``clip_shape``
    ((1, 3, T, H, W): batch 1, the edge case), timed interleaved (A, B, C, A, B, C, ...) so a busy
    neighbour slows every format alike; torch at ``threads`` threads, each :class:`OnnxModel`
    must have been opened with the same count."""
    shape = tuple(int(s) for s in clip_shape)
    odd = {name: m.threads for name, m in models.items() if isinstance(m, OnnxModel) and m.threads != threads}
    if odd:
        raise ValueError(f"onnxruntime sessions opened with other thread counts than {threads}: {odd}")
    clip = torch.zeros(shape)
    times = interleaved_latency_ms(list(models.values()), [clip] * len(models), warmup=warmup, repeats=repeats,
                                   threads=threads)
    return dict(zip(models, times))


# ----------------------------------------------------------------------------- int8


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy with its ``nn.Linear`` layers dynamically quantised to int8 (weights int8, activations
    quantised per batch at run time). Only Linear layers: PyTorch has no dynamic quantisation of
    3D convolutions, so on an X3D it touches the head (its projection and fc) only."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.14 warns that quantized tensor types are deprecated (pytorch#184982); still supported
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        return quantize_dynamic(_eval_copy(model), {nn.Linear}, dtype=torch.qint8)
