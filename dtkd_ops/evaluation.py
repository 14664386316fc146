"""The gate's measurements: per-clip correctness keyed by video id, and latency under one protocol.

* :class:`ClipScores` is what a paired test needs: for every test clip, in loader order, its video
  id and whether the model's top-1 was right, plus the split's fingerprint. The gate pairs two of
  them only when the ids match one for one.
* :func:`score_clips` runs a model over a test loader once and returns both the
  :class:`ClipScores` and dtkd's :class:`~dtkd.eval.EvalResult` (top-1/top-5/loss/confusion)
  from the same logits, so the evaluate step's headline figures and the gate's evidence cannot
  drift apart.
* :func:`latency_ms` times several models in one process, interleaved (A, B, A, B, ...) after a
  warm-up, at a fixed number of torch threads (restored afterwards), and takes the median per
  model. Interleaving makes a busy neighbour slow both models alike instead of only the second.
* :class:`TestSplitEvaluator` is the evaluator of the pipeline step and of ``dtkd gate``: one
  manifest, one split, the view of each model from its version tags.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

import numpy as np
import pandas as pd

from dtkd.config import EvalConfig
from dtkd.data import DataConfig, ViewSpec, class_names, manifest_fingerprint, num_classes_of
from dtkd.eval import EvalResult
from dtkd.eval.complexity import count_params
from dtkd.eval.complexity import latency_ms as core_latency_ms
from dtkd_ops._io import read_manifest
from dtkd_ops.registry import TAG_INPUT_SPEC, ModelVersionRef

VIEW_FIELDS = ("frames", "sampling_rate", "crop_size", "mean", "std")
TEST_MANIFEST_ARTIFACT = "gate/test_manifest.parquet"  # logged with each candidate by the register step
TAG_TEST_FINGERPRINT = "dtkd.gate.test_fingerprint"  # the test split the candidate was registered with
TAG_PROTOCOL = "dtkd.gate.protocol"  # {"num_clips", "num_crops"} of the pipeline's evaluation
TAG_CLASSES = "dtkd.gate.classes"  # the class names the model predicts, in label_idx order


class DataMismatch(ValueError):
    """The two models cannot be compared on these clips (different ids, classes or data)."""


@dataclass(frozen=True)
class ClipScores:
    """Per-clip top-1 correctness of one model on one test split, in loader order."""

    video_ids: tuple[str, ...]
    correct: tuple[bool, ...]
    fingerprint: str  # manifest_fingerprint of the split the clips came from
    extra: dict[str, float] = field(default_factory=dict)  # top5, loss: reported, not tested

    def __post_init__(self) -> None:
        if len(self.video_ids) != len(self.correct):
            raise ValueError(f"{len(self.video_ids)} video ids but {len(self.correct)} correctness values")
        if not self.video_ids:
            raise ValueError("no test clips: a model cannot be judged on an empty split")

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def top1(self) -> float:
        return sum(self.correct) / self.n


class Evaluator(Protocol):
    """What the gate needs from an evaluator (see :class:`TestSplitEvaluator`)."""

    def scores(self, model, ref: ModelVersionRef) -> ClipScores: ...

    def latency_input(self, ref: ModelVersionRef) -> Sequence[int]: ...


# ----------------------------------------------------------------------------- accuracy


def head_metric(heads, metric: Optional[str]) -> Optional[str]:
    """The top-1 the gate compares (``GateConfig.metric``), checked against the model's labels:
    single-label: None (or "top1"); multi-head: a head's name or "action" (None: "action")."""
    if heads is None:
        if metric not in (None, "top1"):
            raise DataMismatch(f"gate metric {metric!r} needs a multi-head model; this one has one label (use null)")
        return None
    choices = (*heads.names, "action")
    metric = "action" if metric in (None, "top1") else metric
    if metric not in choices:
        raise DataMismatch(f"gate metric {metric!r}: this model's choices are {list(choices)}")
    return metric


def score_clips(model, loader, split_rows: pd.DataFrame, *, num_classes: int, device: str = "cpu",
                label: str = "model", metric: Optional[str] = None) -> tuple[ClipScores, EvalResult]:
    """Run ``model`` over ``loader`` (items carry ``index``, the row of ``split_rows``) once.

    Raises :class:`DataMismatch` when the model's output has another class count than the split:
    its predictions would index other labels. A multi-head split (``heads`` column): the clips'
    correctness is ``metric``'s (a head or the action, :func:`head_metric`) and ``extra`` holds
    every head's and the action's top-1/top-5."""
    import torch.nn.functional as F

    from dtkd.data.manifest import heads_of
    from dtkd.data.views import STUDENT_VIEW
    from dtkd.eval.metrics import topk_correct, view_averaged_logits

    logits, targets, index = _predict(model, loader, device, STUDENT_VIEW, view_averaged_logits)
    heads = heads_of(split_rows)
    if heads is not None:
        return _score_heads(logits, targets, index, split_rows, heads, head_metric(heads, metric), label)
    head_metric(None, metric)
    if logits.shape[1] != num_classes:
        raise DataMismatch(f"{label} predicts {logits.shape[1]} classes, the test split has {num_classes}: "
                           f"it was trained on other labels")
    pred = logits.argmax(dim=1)
    ids = split_rows["video_id"].astype(str).to_numpy()[index.numpy()]
    n = len(targets)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets.numpy(), pred.numpy()), 1)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / s) if s else float("nan") for i, s in enumerate(support)]
    top5 = topk_correct(logits, targets, 5) / n
    loss = float(F.cross_entropy(logits, targets, reduction="mean"))
    correct = (pred == targets).tolist()
    result = EvalResult(sum(correct) / n, top5, loss, n, confusion, per_class)
    scores = ClipScores(tuple(ids), tuple(bool(c) for c in correct), manifest_fingerprint(split_rows),
                        {"top5": float(top5), "loss": loss})
    return scores, result


def _score_heads(logits, targets, index, split_rows, heads, metric: str, label: str) -> tuple[ClipScores, EvalResult]:
    """:func:`score_clips` for a multi-head model (dtkd.data.heads): the confusion matrix and
    per-class recall are the first head's; EvalResult.top1/top5 the action's."""
    from dtkd.eval.metrics import cross_entropy_sum, head_counts

    if logits.shape[1] != heads.total:
        raise DataMismatch(f"{label} has {logits.shape[1]} outputs, the test split's heads {heads.as_dict()} need "
                           f"{heads.total}: it was trained on other labels")
    n = len(targets)
    parts, ys = heads.split(logits), heads.decode(targets)
    rates = {k: v / n for k, v in head_counts(logits, targets, heads).items()}
    if metric == "action":
        right = None
        for name in heads.names:
            hit = parts[name].argmax(1) == ys[name]
            right = hit if right is None else right & hit
    else:
        right = parts[metric].argmax(1) == ys[metric]
    first = heads.names[0]
    k = heads.sizes[0]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (ys[first].numpy(), parts[first].argmax(1).numpy()), 1)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / s) if s else float("nan") for i, s in enumerate(support)]
    loss = float(cross_entropy_sum(logits, targets, heads)) / n
    result = EvalResult(rates["action_top1"], rates["action_top5"], loss, n, confusion, per_class, rates)
    ids = split_rows["video_id"].astype(str).to_numpy()[index.numpy()]
    top5 = rates["action_top5"] if metric == "action" else rates[f"{metric}_top5"]
    scores = ClipScores(tuple(ids), tuple(bool(c) for c in right.tolist()), manifest_fingerprint(split_rows),
                        {"top5": float(top5), "loss": loss, **rates})
    return scores, result


def _predict(model, loader, device, view, averaged):
    """(logits, targets, row index) of every clip, on CPU, in loader order; eval mode restored."""
    import torch

    was_training = model.training
    model.eval().to(device)
    logits, targets, index = [], [], []
    try:
        with torch.inference_mode():
            for batch in loader:
                clips = batch["inputs"][view].to(device)
                logits.append(averaged(model, clips).float().cpu())
                targets.append(torch.as_tensor(batch["label"]).long())
                index.append(torch.as_tensor(batch["index"]).long())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("the test loader yielded no clips")
    return torch.cat(logits), torch.cat(targets), torch.cat(index)


# ----------------------------------------------------------------------------- latency


def latency_ms(models: Sequence[Any], input_shapes: Sequence[Sequence[int]], *, warmup: int, repeats: int,
               threads: int, device: str = "cpu") -> list[float]:
    """Median milliseconds of one forward pass per model on a zero clip of its own input shape,
    timed interleaved in this process (dtkd.eval.complexity.latency_ms)."""
    import torch

    inputs = [torch.zeros(tuple(int(s) for s in shape), device=device) for shape in input_shapes]
    return core_latency_ms([m.to(device) for m in models], inputs, warmup=warmup, repeats=repeats, threads=threads)


# ----------------------------------------------------------------------------- the test-split evaluator


def input_spec_of(ref: ModelVersionRef) -> dict[str, Any]:
    """The model's input view from its version tags (``dtkd.input_spec`` or ``dtkd.model_name``)."""
    if TAG_INPUT_SPEC in ref.tags:
        spec = json.loads(ref.tags[TAG_INPUT_SPEC])
    elif "dtkd.model_name" in ref.tags:
        from dtkd.models import get_spec

        s = get_spec(ref.tags["dtkd.model_name"])
        src = getattr(s, "input", s)
        spec = {k: getattr(src, k) for k in VIEW_FIELDS}
    else:
        raise ValueError(f"{ref}: no '{TAG_INPUT_SPEC}' or 'dtkd.model_name' tag; cannot build its test view "
                         f"(register with input_spec=...)")
    missing = [k for k in VIEW_FIELDS if k not in spec]
    if missing:
        raise ValueError(f"{ref}: input spec lacks {missing}: {spec}")
    return spec


class TestSplitEvaluator:
    """Scores models on the ``split`` rows of one manifest with dtkd's test loader, each model at
    the view recorded on its version; its latency input is one clip of that view, unless the gate
    config fixes ``latency.input_shape``."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, manifest: Union[pd.DataFrame, str, Path], *, split: str = "test",
                 evaluation: Optional[EvalConfig] = None, data: Optional[DataConfig] = None,
                 device: str = "cpu", input_shape: Optional[Sequence[int]] = None, num_classes: Optional[int] = None,
                 metric: Optional[str] = None):
        df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
        if not (df["split"] == split).any():
            raise ValueError(f"manifest has no '{split}' rows (splits: {sorted(df['split'].unique())})")
        self.manifest, self.split, self.device = df, split, device
        self.evaluation = evaluation or EvalConfig()
        self.data = data or DataConfig(num_workers=0)
        self.rows = df[df["split"] == split].reset_index(drop=True)  # ClipDataset's row order
        self.num_classes = num_classes or num_classes_of(df)  # a test-only manifest may lack the last class
        self.input_shape = list(input_shape) if input_shape else None
        self.metric = metric  # GateConfig.metric: which top-1 a multi-head model's clips are scored on

    def view(self, ref: ModelVersionRef) -> ViewSpec:
        spec = input_spec_of(ref)
        return ViewSpec(**{k: spec[k] for k in VIEW_FIELDS})

    def scores(self, model, ref: ModelVersionRef) -> ClipScores:
        return self.evaluate(model, self.view(ref), label=str(ref))[0]

    def evaluate(self, model, view: ViewSpec, *, label: str = "model") -> tuple[ClipScores, EvalResult]:
        from dtkd.assemble import test_loader

        loader = test_loader(self.manifest, view, self.evaluation, self.data, split=self.split)
        return score_clips(model, loader, self.rows, num_classes=self.num_classes, device=self.device, label=label,
                           metric=self.metric)

    def latency_input(self, ref: ModelVersionRef) -> list[int]:
        if self.input_shape:
            return self.input_shape
        v = self.view(ref)
        return [1, 3, v.frames, v.crop_size, v.crop_size]


def evaluate_on_test_split(model, view: ViewSpec, manifest: pd.DataFrame, gate, *,
                           evaluation: Optional[EvalConfig] = None, data: Optional[DataConfig] = None,
                           split: str = "test", flops: bool = False,
                           device: str = "cpu") -> tuple[dict, EvalResult, ClipScores]:
    """The evaluate step's figures for one model: top-1/top-5/loss/n, params, latency (the gate's
    protocol, alone), GFLOPs with ``flops``, and the split's ``dataset_fingerprint``. The gate
    does not take these: it measures candidate and champion itself, side by side."""
    ev = TestSplitEvaluator(manifest, split=split, evaluation=evaluation, data=data, device=device,
                            input_shape=gate.latency.input_shape, metric=gate.metric)
    scores, result = ev.evaluate(model, view)
    shape = ev.input_shape or [1, 3, view.frames, view.crop_size, view.crop_size]
    lat = gate.latency
    metrics = {"top1": scores.top1, **scores.extra, "n": scores.n, "params": count_params(model),
               "latency_ms": latency_ms([model], [shape], warmup=lat.warmup, repeats=lat.repeats,
                                        threads=lat.threads, device=lat.device)[0],
               "dataset_fingerprint": scores.fingerprint}
    if flops:
        from dtkd.eval.complexity import count_flops

        metrics["gflops"] = float(count_flops(model, shape))
    return metrics, result, scores


def gate_tags(manifest: pd.DataFrame, evaluation: EvalConfig, split: str = "test") -> dict[str, str]:
    """Version tags that let ``dtkd gate`` judge a candidate exactly as the pipeline did."""
    from dtkd.data.manifest import head_class_names, heads_of

    protocol = {"num_clips": evaluation.num_clips, "num_crops": evaluation.num_crops}
    heads = heads_of(manifest)
    # a multi-head model predicts each head's classes (not the actions this manifest happens to hold)
    classes = class_names(manifest) if heads is None else [
        f"{h}:{name}" for h in heads.names for name in head_class_names(manifest, h)]
    return {TAG_TEST_FINGERPRINT: manifest_fingerprint(manifest, split), TAG_PROTOCOL: json.dumps(protocol),
            TAG_CLASSES: json.dumps(classes)}


def recorded_classes(ref: ModelVersionRef) -> Optional[list[str]]:
    return json.loads(ref.tags[TAG_CLASSES]) if TAG_CLASSES in ref.tags else None


def label_mismatch(candidate: ModelVersionRef, champion: ModelVersionRef) -> Optional[str]:
    """Why the two cannot be compared clip by clip: they predict different label sets (when both
    recorded theirs). Such a candidate is a new model, not a replacement: promote it by hand."""
    a, b = recorded_classes(candidate), recorded_classes(champion)
    if a is None or b is None or a == b:
        return None
    return (f"{candidate} predicts {len(a)} classes {a[:6]}{'...' if len(a) > 6 else ''}, {champion} "
            f"{len(b)} classes {b[:6]}{'...' if len(b) > 6 else ''}: not the same labels")


def recorded_protocol(ref: ModelVersionRef, batch_size: int = 8) -> EvalConfig:
    """The evaluation protocol recorded on ``ref`` (:func:`gate_tags`), else dtkd's default."""
    return EvalConfig(**json.loads(ref.tags.get(TAG_PROTOCOL, "{}")), batch_size=batch_size)


def gated_test_manifest(registry, ref: ModelVersionRef) -> pd.DataFrame:
    """The test manifest ``ref`` was registered with (:data:`TEST_MANIFEST_ARTIFACT`), so that
    ``dtkd gate`` judges on the very clips the pipeline's gate used."""
    import mlflow

    if not ref.run_id:
        raise ValueError(f"{ref}: no registering run; pass --manifest")
    try:
        path = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=TEST_MANIFEST_ARTIFACT,
                                                   tracking_uri=registry.tracking_uri)
    except Exception as err:  # noqa: BLE001 - MLflow raises several types for "not there"
        raise ValueError(f"{ref}: run {ref.run_id} has no '{TEST_MANIFEST_ARTIFACT}' artifact ({err}); "
                         f"pass --manifest with the test split to judge on") from None
    return read_manifest(path)
