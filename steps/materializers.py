"""dtkd's ZenML materializers: a manifest and a model are stored by content, never pickled.

**Manifest.** A manifest's identity is its content: ZenML caches the steps downstream of ingest on it.

ZenML keys a step's cache on its input artifacts' content hashes when their materializer gives
one (``CachePolicy.include_artifact_values``, on by default), else on the artifact ids. A
manifest carries every file's sha256 (``dtkd.data.manifest``), so hashing the table hashes the
data: an ingest that finds the same files gives the same key (the teachers and the student stay
cached), and new bytes under the same names give a new one (they retrain, never resume stale).

**Model** (:class:`ModelMaterializer`, every step output that is an ``nn.Module``). ZenML's own
PyTorch materializer pickles the whole module and loads it with ``torch.load(weights_only=False)``:
loading an artifact from a shared store could run any code, and an artifact breaks when a class
changes. A dtkd model is stored as what it *is*: ``recipe.json`` (the ``dtkd.models.build`` call,
``model.dtkd_recipe``) and ``weights.pt`` (a plain state dict of CPU tensors, loaded with
``weights_only=True``); loading rebuilds the architecture from the registry and loads the weights
strictly. Its content hash (recipe + every tensor) lets ZenML cache the steps downstream of a
model on what the model is, and is checked again on load.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, ClassVar, Mapping, Optional

import pandas as pd
import torch
from torch import nn
from zenml.enums import ArtifactType
from zenml.integrations.pandas.materializers.pandas_materializer import PandasMaterializer
from zenml.materializers.base_materializer import BaseMaterializer

from dtkd import models


def frame_digest(df: pd.DataFrame) -> str:
    """sha256 over a table's column names, dtypes and every cell (row order included)."""
    h = hashlib.sha256()
    h.update(repr([(str(c), str(t)) for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())
    return h.hexdigest()


class ManifestMaterializer(PandasMaterializer):
    """Stores a manifest as ZenML's pandas materializer does, with a content hash."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (pd.DataFrame,)

    def compute_content_hash(self, data: Any) -> Optional[str]:
        return frame_digest(data) if isinstance(data, pd.DataFrame) else None


# ------------------------------------------------------------------------------------ models
RECIPE_FILE = "recipe.json"
WEIGHTS_FILE = "weights.pt"
_HASH_FORMAT = b"dtkd.model.v1"


class ModelArtifactError(RuntimeError):
    """A model that cannot be stored as recipe + state dict, or an artifact that cannot be rebuilt."""


def _recipe_or_refuse(model: nn.Module) -> dict:
    recipe = models.recipe_of(model)
    if recipe is None:
        raise ModelArtifactError(
            f"cannot store a {type(model).__module__}.{type(model).__qualname__} as a model artifact: it "
            f"carries no dtkd build recipe (model.dtkd_recipe). Pipeline steps return models built with "
            f"dtkd.models.build(name, num_classes, **overrides) (dtkd.assemble.build_model for a ModelRef), "
            f"stored as recipe + state dict, never pickled; a model reused from the MLflow registry needs a "
            f"version registered with its dtkd.architecture tag (re-register it)")
    return recipe


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as detached, contiguous CPU tensors; anything else in it is refused."""
    state = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ModelArtifactError(f"{type(model).__name__}: state dict entry {name!r} is a "
                                     f"{type(value).__name__}, not a tensor; a model artifact holds tensors only")
        state[name] = value.detach().to("cpu").contiguous()
    return state


def model_digest(recipe: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the recipe (canonical JSON) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(_HASH_FORMAT)
    h.update(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode())
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_rebuildable(recipe: dict, state: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse at save time what would not load: the recipe's architecture (built on the meta
    device: no memory, no init) must have exactly the state dict's names and shapes."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in
                        models.build(recipe["name"], recipe["num_classes"], **recipe["overrides"]).state_dict().items()}
    except (RuntimeError, NotImplementedError) as err:
        if "meta" in str(err):
            return  # a factory that reads tensor values: checked on load (strict) instead
        raise
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ModelArtifactError(
            f"{type(model).__name__} was changed after dtkd.models.build({recipe}): its state dict no longer "
            f"matches the recipe's architecture (missing {missing[:5]}, extra {extra[:5]}, other shapes "
            f"{shapes[:5]}); the artifact could not be rebuilt")


class ModelMaterializer(BaseMaterializer):
    """A dtkd model as ``recipe.json`` + ``weights.pt`` (state dict); rebuilt by name on load."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (nn.Module,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, model: nn.Module) -> None:
        recipe = _recipe_or_refuse(model)
        state = cpu_state_dict(model)
        _check_rebuildable(recipe, state, model)
        buffer = io.BytesIO()
        torch.save(state, buffer)  # tensors in a dict: what torch.load(weights_only=True) accepts
        with self.artifact_store.open(os.path.join(self.uri, RECIPE_FILE), "w") as f:
            f.write(json.dumps(recipe, sort_keys=True, indent=2))
        with self.artifact_store.open(os.path.join(self.uri, WEIGHTS_FILE), "wb") as f:
            f.write(buffer.getvalue())

    def load(self, data_type: type[Any]) -> nn.Module:
        with self.artifact_store.open(os.path.join(self.uri, RECIPE_FILE), "r") as f:
            recipe = json.loads(f.read())
        with self.artifact_store.open(os.path.join(self.uri, WEIGHTS_FILE), "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        if self.expected_content_hash is not None and model_digest(recipe, state) != self.expected_content_hash:
            raise ModelArtifactError(f"the model artifact at {self.uri!r} does not match its recorded content hash")
        name = recipe.get("name") if isinstance(recipe, dict) else None
        if name not in models.list_models():
            raise ModelArtifactError(
                f"cannot load the model artifact at {self.uri!r}: its recipe names model {name!r}, which this "
                f"dtkd does not register (known: {', '.join(models.list_models())})")
        with torch.random.fork_rng(devices=[]):  # the throwaway init draws nothing from the caller's RNG
            try:
                model = models.build(name, recipe["num_classes"], **recipe.get("overrides", {}))
            except (KeyError, TypeError, ValueError) as err:
                raise ModelArtifactError(f"cannot rebuild the model artifact at {self.uri!r} from its recipe "
                                         f"{recipe}: {err}") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ModelArtifactError(f"the weights of the model artifact at {self.uri!r} do not fit "
                                     f"{name!r} built from its recipe {recipe}: {err}") from None
        return model.eval()

    def compute_content_hash(self, data: Any) -> Optional[str]:
        recipe = models.recipe_of(data) if isinstance(data, nn.Module) else None
        return model_digest(recipe, cpu_state_dict(data)) if recipe is not None else None

    def extract_metadata(self, data: Any) -> dict[str, Any]:
        recipe = models.recipe_of(data) or {}
        return {"model": str(recipe.get("name")), "num_classes": int(recipe.get("num_classes") or 0),
                "num_params": int(sum(p.numel() for p in data.parameters()))}
