"""``dtkd export``: a registered model version to TorchScript and ONNX, checked and timed on its
test clips, the files logged to MLflow next to the version (docs/export.md).

* **Model**: :meth:`ModelRegistry.load_model` (the eager dtkd module when the version carries a
  ``dtkd.architecture`` tag), in eval mode on CPU.
* **Clips**: the ``split`` rows of ``--manifest``, else the test manifest logged with the version
  (:data:`~dtkd_ops.evaluation.TEST_MANIFEST_ARTIFACT`, what the pipeline's gate judged on), at
  the version's view and evaluation protocol (as ``dtkd gate`` reads them).
* **Checks**: :func:`dtkd.eval.export.parity` of each format against the loaded model on those
  clips (a multi-head model, e.g. EPIC's verb + noun: per head, and the clips whose every head
  agrees, which must pass); any format outside the tolerance fails the command and nothing is logged.
* **Where the files go**: a **new MLflow run** in the registry's experiment, named
  ``export-<model>-v<version>`` and tagged with the version (``dtkd.export.model``,
  ``dtkd.export.version``, ``dtkd.export.source_run``), holding ``export/model.pt``,
  ``export/model.onnx`` and ``export/report.json`` plus the figures as metrics; the version gets
  ``dtkd.export.run_id`` (and the parity figures) as tags. A new run, not the registering one: that
  run's metrics are the pipeline's evidence for the gate and stay as they were logged.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

log = logging.getLogger(__name__)

TAG_EXPORT_RUN = "dtkd.export.run_id"
TAG_EXPORT_MODEL = "dtkd.export.model"  # on the export run: which version it exported
TAG_EXPORT_VERSION = "dtkd.export.version"
TAG_EXPORT_SOURCE = "dtkd.export.source_run"  # the version's registering run
ARTIFACT_DIR = "export"


@dataclass
class ExportReport:
    """Everything one ``dtkd export`` measured; ``ok`` when every format is within tolerance."""

    model: str
    version: int
    view: dict
    clips: int
    files: dict[str, str]
    opset: int
    parity: dict[str, dict]
    latency_ms: dict[str, float]
    threads: int
    repeats: int
    warmup: int
    int8: Optional[dict] = None
    run_id: Optional[str] = None

    @property
    def ok(self) -> bool:
        return all(p["ok"] for p in self.parity.values())

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"ok": self.ok}

    def summary(self) -> str:
        lines = [f"{self.model} v{self.version}: {self.clips} test clips at {self.view['frames']}x"
                 f"{self.view['crop_size']}^2, ONNX opset {self.opset}"]
        base = self.latency_ms.get("pytorch")
        for fmt, ms in self.latency_ms.items():
            p = self.parity.get(_parity_key(fmt))
            heads = "".join(f", {h} {a:.4f}" for h, a in (p or {}).get("head_agreement", {}).items())
            figures = ("reference" if p is None else f"max abs diff {p['max_abs_diff']:.3g} (<= {p['atol']:g}), "
                       f"top-1 agreement {p['top1_agreement']:.4f}{heads} {'ok' if p['ok'] else 'FAILED'}")
            ratio = f" ({ms / base:.2f}x PyTorch)" if base else ""
            lines.append(f"  {fmt:<12} latency {ms:8.1f} ms{ratio}  {figures}")
        lines.append(f"  latency: batch 1, median of {self.repeats} interleaved forwards after {self.warmup} "
                     f"warm-up, {self.threads} thread(s), CPU")
        if self.int8:
            q = self.int8
            lines.append(f"  int8 (dynamic, Linear layers): top-1 {q['top1_int8']:.4f} vs {q['top1_fp32']:.4f} "
                         f"(delta {q['top1_delta']:+.4f}), latency {q['latency_ms']:.1f} ms; not exported")
        if self.run_id:
            lines.append(f"  logged to MLflow run {self.run_id} ({ARTIFACT_DIR}/), tagged on the version")
        return "\n".join(lines)


def _parity_key(fmt: str) -> str:
    return "onnx" if fmt == "onnxruntime" else fmt


def _test_clips(manifest, view, evaluation, split: str, max_clips: Optional[int]):
    """[(clips, labels)] of the split, in loader order, at most ``max_clips`` clips."""
    import torch

    from dtkd.assemble import test_loader
    from dtkd.data import DataConfig
    from dtkd.data.views import STUDENT_VIEW

    out, n = [], 0
    for batch in test_loader(manifest, view, evaluation, DataConfig(num_workers=0), split=split):
        clips, labels = batch["inputs"][STUDENT_VIEW], torch.as_tensor(batch["label"]).long()
        if max_clips is not None:
            clips, labels = clips[: max_clips - n], labels[: max_clips - n]
        out.append((clips, labels))
        n += clips.shape[0]
        if max_clips is not None and n >= max_clips:
            break
    if not out:
        raise ValueError(f"no '{split}' clips to check the export on")
    return out


def _top1(model, batches, heads=None) -> float:
    """Top-1 on ``batches``; a multi-head model's counts a clip when every head is right (the action)."""
    import torch

    from dtkd.eval.metrics import top1_correct, view_averaged_logits

    right = n = 0
    with torch.inference_mode():
        for clips, labels in batches:
            right += int(top1_correct(view_averaged_logits(model, clips), labels, heads))
            n += len(labels)
    return right / n


def export_version(registry, name: str, version: Union[int, str] = "champion", *, manifest=None,
                   split: str = "test", out_dir: Union[str, Path], opset: Optional[int] = None,
                   atol: Optional[float] = None, min_agreement: Optional[float] = None, threads: int = 1,
                   warmup: int = 3, repeats: int = 10, batch_size: int = 8, max_clips: Optional[int] = None,
                   int8: bool = False, log_to_mlflow: bool = True) -> ExportReport:
    """Export, check and time one registered version; log it when every format passes."""
    from dtkd.data import ViewSpec
    from dtkd.data.manifest import heads_of
    from dtkd.eval import export as ex
    from dtkd_ops._io import read_manifest
    from dtkd_ops.evaluation import VIEW_FIELDS, gated_test_manifest, input_spec_of, recorded_protocol

    opset = ex.DEFAULT_OPSET if opset is None else opset
    atol = ex.DEFAULT_ATOL if atol is None else atol
    min_agreement = ex.DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement
    ref = registry.get_version(name, version)
    spec = input_spec_of(ref)
    view = ViewSpec(**{k: spec[k] for k in VIEW_FIELDS})
    df = read_manifest(manifest) if manifest is not None else gated_test_manifest(registry, ref)
    heads = heads_of(df[df["split"] == split])
    batches = _test_clips(df, view, recorded_protocol(ref, batch_size), split, max_clips)
    clips = [c for c, _ in batches]
    model = registry.load_model(name, ref.version).eval()

    out = Path(out_dir) / f"{name}-v{ref.version}"
    files = {"torchscript": ex.export_torchscript(model, clips[0], out / "model.pt"),
             "onnx": ex.export_onnx(model, clips[0], out / "model.onnx", opset=opset)}
    runners = {"pytorch": model, "torchscript": ex.load_torchscript(files["torchscript"]),
               "onnxruntime": ex.OnnxModel(files["onnx"], threads=threads)}
    parity = {fmt: ex.parity(model, runners[run], clips, format=fmt, atol=atol, min_agreement=min_agreement,
                             heads=heads).to_dict()
              for fmt, run in (("torchscript", "torchscript"), ("onnx", "onnxruntime"))}
    int8_model = ex.quantize_dynamic_int8(model) if int8 else None
    if int8_model is not None:
        runners["int8"] = int8_model
    shape = (1, 3, view.frames, view.crop_size, view.crop_size)
    latency = ex.latency_ms(runners, shape, threads=threads, warmup=warmup, repeats=repeats)
    int8_figures = None
    if int8_model is not None:
        fp32, q = _top1(model, batches, heads), _top1(int8_model, batches, heads)
        int8_figures = {"top1_fp32": fp32, "top1_int8": q, "top1_delta": q - fp32, "latency_ms": latency.pop("int8")}
    report = ExportReport(model=name, version=ref.version, view=view.model_dump(), clips=sum(c.shape[0] for c in clips),
                          files={k: str(v) for k, v in files.items()}, opset=opset, parity=parity, latency_ms=latency,
                          threads=threads, repeats=repeats, warmup=warmup, int8=int8_figures)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if report.ok and log_to_mlflow:
        report.run_id = _log(registry, ref, report, out)
        (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _log(registry, ref, report: ExportReport, out: Path) -> str:
    """A new run tagged with the version, holding the files and figures; the version tagged back."""
    client = registry.client
    tags = {TAG_EXPORT_MODEL: ref.name, TAG_EXPORT_VERSION: str(ref.version), TAG_EXPORT_SOURCE: ref.run_id or "",
            "mlflow.runName": f"export-{ref.name}-v{ref.version}"}
    run = client.create_run(registry.ensure_experiment(), tags=tags)
    run_id = run.info.run_id
    try:
        for key, value in {"opset": report.opset, "threads": report.threads, "repeats": report.repeats,
                           "warmup": report.warmup, "clips": report.clips,
                           "view": json.dumps(report.view, sort_keys=True)}.items():
            client.log_param(run_id, key, str(value))
        for fmt, p in report.parity.items():
            client.log_metric(run_id, f"{fmt}_max_abs_diff", p["max_abs_diff"])
            client.log_metric(run_id, f"{fmt}_top1_agreement", p["top1_agreement"])
            for head, agreement in p.get("head_agreement", {}).items():
                client.log_metric(run_id, f"{fmt}_{head}_top1_agreement", agreement)
        for fmt, ms in report.latency_ms.items():
            client.log_metric(run_id, f"latency_ms_{fmt}", ms)
        for key, value in (report.int8 or {}).items():
            client.log_metric(run_id, f"int8_{key}", value)
        report.run_id = run_id
        (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
        for path in ("model.pt", "model.onnx", "report.json"):
            client.log_artifact(run_id, str(out / path), artifact_path=ARTIFACT_DIR)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    registry.tag_version(ref, {TAG_EXPORT_RUN: run_id, "dtkd.export.onnx_opset": report.opset,
                               **{f"dtkd.export.{fmt}_max_abs_diff": f"{p['max_abs_diff']:.3g}"
                                  for fmt, p in report.parity.items()}})
    log.info("exported %s v%s: run %s", ref.name, ref.version, run_id)
    return run_id
