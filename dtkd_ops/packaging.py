"""Deployable registered models: what :meth:`dtkd_ops.registry.ModelRegistry.register_candidate`
logs besides the weights, and how dtkd gets its own model back.

* **Serialization: MLflow's ``pt2`` format** (``torch.export``). MLflow 3 loads it with
  ``torch.export.load`` and, when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``, first checks the
  archive holds no pickle payload; the consumer needs neither dtkd's code nor pytorchvideo, only
  ``mlflow`` (the loader), ``torch`` and ``numpy``. A TorchScript module would not do: MLflow 3
  files it under the *pickle* format and refuses it when pickle is disallowed. ``pickle`` and
  state dict + ``code_paths`` both unpickle classes, i.e. run the code they name.
* **Checked at registration**: the logged model is loaded back and must give the eager model's
  logits on a batch of another size than the export example (the batch stays dynamic), with
  the eager model's state-dict keys (pretrained reuse), or registration fails naming the gap.
* **Signature and input example**: a batch of :data:`EXAMPLE_BATCH` clips in the model's input
  (``(B, 3, frames, crop, crop)`` float32, normalised); logits ``(B, classes)`` out.
* **dtkd's own loads** (teacher reuse, pretrained weights, the gate) need an eager module with
  the dtkd architecture (forward hooks for feature taps, ``train()``/``eval()``): the version
  carries the rebuild recipe (``dtkd.architecture``: registry name, classes, build options) and
  :func:`rebuild` builds it and loads the exported weights (the keys are the eager model's).
"""
from __future__ import annotations

import copy
import json
import types
from dataclasses import dataclass
from typing import Any, Mapping, Optional

EXAMPLE_BATCH = 2  # torch.export specialises a size-1 dimension: a batch of 2 keeps it dynamic
CHECK_BATCH = 3  # the loaded model is checked on another batch size than the export's
MAX_ABS_DIFF = 1e-4  # logits of the exported vs the eager model (measured: 0.0 on the zoo's tiny models)
SERIALIZATION_PT2 = "pt2"
SERIALIZATION_PICKLE = "pickle"
TAG_ARCHITECTURE = "dtkd.architecture"
TAG_SERIALIZATION = "dtkd.serialization"
_NOT_ARCHITECTURE = {"pretrained", "sampling_rate"}  # weights / data view, not the module's shape


class PackagingError(RuntimeError):
    """The model cannot be logged in a form that loads and predicts like the trained one."""


@dataclass(frozen=True)
class Package:
    """A model ready to log: an eval-mode CPU copy, its example and signature, its rebuild recipe."""

    model: Any  # torch.nn.Module, a CPU eval-mode copy (the caller's module is left as it was)
    example: Any  # np.ndarray, EXAMPLE_BATCH clips
    signature: Any  # mlflow.models.ModelSignature
    num_classes: int
    architecture: Optional[dict]  # for rebuild(); None when the model is not from dtkd.models

    def metadata(self, input_spec: Optional[Mapping[str, Any]]) -> dict:
        """MLmodel ``metadata``: what a consumer needs to feed the model without dtkd's docs."""
        return {"dtkd": {"input_spec": dict(input_spec or {}), "architecture": self.architecture,
                         "input_layout": "(batch, channels=3, frames, height, width), normalised with mean/std",
                         "output": f"(batch, {self.num_classes}) logits"}}


def model_requirements() -> list[str]:
    """What a consumer installs to load and predict: mlflow is the loader (``models:/`` URIs,
    ``mlflow.pytorch.load_model``), torch runs the exported graph, numpy feeds pyfunc. Not dtkd,
    not pytorchvideo: the ``pt2`` graph holds the architecture."""
    import mlflow
    import numpy
    import torch

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={numpy.__version__}"]


def example_clips(input_spec: Mapping[str, Any], batch: int = EXAMPLE_BATCH, seed: int = 0):
    """``batch`` clips shaped like the model's input. Values are multiples of 1/4 in [-2, 2]
    (normalised-pixel range) so MLflow's JSON copy of the example stays short (``-1.25``, not
    ``-1.2499999523``)."""
    import numpy as np

    try:
        frames, crop = int(input_spec["frames"]), int(input_spec["crop_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise PackagingError(f"input_spec {dict(input_spec)!r} lacks frames/crop_size ({err}): cannot "
                             f"build an input example; pass input_example=") from None
    channels = len(input_spec.get("mean") or (0, 0, 0))
    rng = np.random.default_rng(seed)
    values = np.clip(np.round(rng.standard_normal((batch, channels, frames, crop, crop)) * 4) / 4, -2, 2)
    return values.astype(np.float32)


def architecture_of(input_spec: Optional[Mapping[str, Any]], build_options: Optional[Mapping[str, Any]],
                    num_classes: int) -> Optional[dict]:
    """The ``dtkd.models.build`` call that makes this architecture again, or None when the
    model was not named (no ``model_name`` in ``input_spec``)."""
    if not input_spec or not input_spec.get("model_name"):
        return None
    options = {"frames": input_spec.get("frames"), "crop_size": input_spec.get("crop_size")}
    options.update({k: v for k, v in (build_options or {}).items() if k not in _NOT_ARCHITECTURE})
    return {"name": str(input_spec["model_name"]), "num_classes": int(num_classes),
            "options": {k: v for k, v in options.items() if v is not None}}


def prepare(model, *, input_spec: Optional[Mapping[str, Any]] = None, input_example=None,
            build_options: Optional[Mapping[str, Any]] = None) -> Optional[Package]:
    """A :class:`Package` for ``model``, or None when there is no input to export it with:
    neither ``input_example`` nor the ``input_spec`` of a ``dtkd.models`` model (``model_name``;
    clips are what those take, another module's ``input_spec`` is only the gate's metadata)."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    if input_example is None and not (input_spec and input_spec.get("model_name")):
        return None
    example = (np.asarray(input_example, dtype=np.float32) if input_example is not None
               else example_clips(input_spec))
    cpu = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        logits = cpu(torch.from_numpy(example))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise PackagingError(f"{type(model).__name__} returned {type(logits).__name__} "
                             f"{getattr(logits, 'shape', '')} for an input {example.shape}; a registered "
                             f"model must return one (batch, classes) logits tensor")
    signature = infer_signature(example, logits.numpy())
    num_classes = int(logits.shape[1])
    return Package(cpu, example, signature, num_classes, architecture_of(input_spec, build_options, num_classes))


def verify_loaded(package: Package, loaded) -> float:
    """Fail unless ``loaded`` (the logged model, read back) predicts like the eager model on a
    batch of :data:`CHECK_BATCH` clips and has its state-dict keys. Returns the max abs diff."""
    import torch

    clips = torch.from_numpy(_check_clips(package))
    diff = _max_abs_diff(package.model, loaded, clips, "the exported model")
    eager_keys, loaded_keys = set(package.model.state_dict()), set(loaded.state_dict())
    if eager_keys != loaded_keys:
        raise PackagingError(
            f"the exported model's state dict differs from the eager model's: missing "
            f"{sorted(eager_keys - loaded_keys)[:5]}, extra {sorted(loaded_keys - eager_keys)[:5]}; "
            f"pretrained reuse and dtkd's rebuild would load the wrong weights")
    if package.architecture is not None:
        rebuilt = rebuild(package.architecture, loaded.state_dict())
        _max_abs_diff(package.model, rebuilt, clips,
                      f"dtkd.models.build({package.architecture}) with the exported weights "
                      f"(pass build_options= the model's overrides)")
    return diff


def _check_clips(package: Package):
    import numpy as np

    example = package.example
    reps = -(-CHECK_BATCH // example.shape[0])
    return np.concatenate([example] * reps)[:CHECK_BATCH] * np.float32(-1)


def _max_abs_diff(reference, candidate, clips, what: str) -> float:
    """The core's export parity check (dtkd.eval.export.parity: max abs logit difference and top-1
    agreement on the same clips), as a PackagingError naming ``what``."""
    from dtkd.eval.export import ParityError, parity

    try:
        return parity(reference, candidate, [clips], format=what, atol=MAX_ABS_DIFF).check().max_abs_diff
    except ParityError as err:
        raise PackagingError(f"{err}; not registered") from None


def rebuild(architecture: Mapping[str, Any], state_dict: Mapping[str, Any]):
    """The eager dtkd module of ``architecture`` (a ``dtkd.architecture`` tag) with ``state_dict``,
    in eval mode: what dtkd's own code trains, taps and evaluates."""
    from dtkd import models

    try:
        model = models.build(architecture["name"], int(architecture["num_classes"]), **dict(architecture["options"]))
        model.load_state_dict(dict(state_dict), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise PackagingError(f"cannot rebuild {json.dumps(dict(architecture), default=str)} with the "
                             f"registered weights: {err}") from None
    return model.eval()


def inference_only(module):
    """``module`` (a ``torch.export`` graph, which refuses ``train()``/``eval()``) with ``eval()``
    and ``train(False)`` as no-ops, so code that toggles modes around inference (the gate's
    evaluation) can use it; ``train(True)`` still fails: the graph was exported in eval mode."""
    def _train(self, mode: bool = True):
        if mode:
            raise NotImplementedError("this registered model is an exported (torch.export) graph, "
                                      "inference only; load it through dtkd with a dtkd.architecture "
                                      "tag to train it")
        return self

    module.train = types.MethodType(_train, module)
    module.eval = types.MethodType(lambda self: self, module)
    for sub in module.modules():
        sub.training = False
    return module


def is_exported(module) -> bool:
    """True for the graph module ``torch.export`` loading returns (``mlflow`` pt2 format)."""
    import torch

    return isinstance(module, torch.fx.GraphModule)


# ---------------------------------------------------------------------- model card


def model_card(*, registered_name: str, role: Optional[str], metrics: Mapping[str, float],
               params: Mapping[str, Any], tags: Mapping[str, str], dataset_fingerprint: str,
               teachers: Optional[Mapping[str, str]], input_spec: Optional[Mapping[str, Any]],
               package: Optional[Package], requirements: list[str]) -> str:
    """The model version's MLflow description (Markdown): what it is, the data it saw, how it was
    made and how well it did, and how to load it. Short enough for the registry page."""
    lines = [f"# {registered_name}" + (f" ({role})" if role else ""), ""]
    model_name = (input_spec or {}).get("model_name") or params.get("model") or params.get("student")
    method = params.get("method")
    lines += [f"- **Model**: {model_name or 'not recorded'}" + (f", {package.num_classes} classes" if package else ""),
              f"- **Method**: {method or _method_of_role(role)}",
              f"- **Teachers**: {_teachers(teachers)}",
              f"- **Data version**: DVC `{tags.get('dtkd.data.dvc_hash') or 'not tracked'}`, git "
              f"`{tags.get('dtkd.data.git_rev') or 'unknown'}`, dataset fingerprint `{dataset_fingerprint}`",
              "", "## Test metrics", ""]
    rows = [f"| {k} | {_number(v)} |" for k, v in sorted(metrics.items())]
    lines += ["| metric | value |", "| --- | --- |", *rows] if rows else ["(none logged)"]
    lines += ["", "## Input and loading", ""]
    if input_spec:
        lines.append(f"- **Input**: `(batch, 3, {input_spec.get('frames')}, {input_spec.get('crop_size')}, "
                     f"{input_spec.get('crop_size')})` float32, normalised with mean {input_spec.get('mean')} "
                     f"and std {input_spec.get('std')}; output: logits")
    if package is not None:
        lines.append("- **Format**: MLflow `pt2` (torch.export): `mlflow.pytorch.load_model(\"models:/"
                     f"{registered_name}@champion\")` needs only `{' '.join(requirements)}`, no dtkd code, "
                     "no unpickling of code")
    else:
        lines.append("- **Format**: pickle (no input example was given): loading needs dtkd's code")
    return "\n".join(lines) + "\n"


def _method_of_role(role: Optional[str]) -> str:
    """Teachers and pretrained backbones are one-model stages (``steps.tracking.fit_and_test``)."""
    if role and (role.endswith("_teacher") or role.startswith("pretrained")):
        return "one-model training on labels (no distillation)"
    return "not recorded"


def _teachers(teachers: Optional[Mapping[str, str]]) -> str:
    if not teachers:
        return "none"
    return ", ".join(f"{role}: {name}" for role, name in sorted(teachers.items()))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"
