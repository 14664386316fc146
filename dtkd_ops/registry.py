"""MLflow model registry for dtkd: candidates, the ``challenger``/``champion`` aliases, loading.

* Tracking store: ``sqlite:///<dir>/mlflow.db`` (MLflow 3 refuses the file store) or an
  ``http(s)://`` server. New experiments store artifacts next to the sqlite file
  (``<dir>/artifacts``), not in ``./mlruns`` of whatever the working directory happens to be.
* A candidate is logged in MLflow's ``pt2`` format (``torch.export``) with a signature, an input
  example, requirements that load it without dtkd's code and a model card as the version's
  description (:mod:`dtkd_ops.packaging`); it is read back and checked against the eager model
  before it is registered. A model given no input (no ``input_spec``/``input_example``) is
  pickled, as before. The returned ``models:/m-...`` URI is registered; registering
  ``runs:/<id>/model`` breaks loading ``models:/<name>@champion`` in MLflow 3.
* Aliases instead of the deprecated stages: ``challenger`` = latest candidate, ``champion`` = the
  model in service. ``champion`` only moves in :meth:`ModelRegistry.set_champion`, one alias update
  done last, and the version it replaced is recorded on the new one (``dtkd.previous_champion``) so
  :meth:`ModelRegistry.rollback_champion` can restore it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_PREFIX = "dtkd."
TAG_DATASET = "dtkd.dataset_fingerprint"
TAG_INPUT_SPEC = "dtkd.input_spec"
TAG_PREVIOUS_CHAMPION = "dtkd.previous_champion"
DEFAULT_EXPERIMENT = "dtkd"
_TAG_MAX = 5000  # MLflow's limit on a tag value

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A registry lookup or update that cannot be done; the message names the model/version/alias."""


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version."""

    name: str
    version: int
    model_uri: str  # the logged model, models:/m-...
    run_id: Optional[str]
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """Registry URI of this exact version."""
        return f"models:/{self.name}/{self.version}"

    @property
    def dataset_fingerprint(self) -> Optional[str]:
        return self.tags.get(TAG_DATASET)

    def __str__(self) -> str:
        alias = f" @{','.join(self.aliases)}" if self.aliases else ""
        return f"{self.name} v{self.version}{alias}"


def check_tracking_uri(uri: str) -> str:
    """Refuse stores MLflow 3's registry cannot use, with the fix in the message."""
    if uri.startswith(("sqlite:///", "http://", "https://", "databricks", "postgresql", "mysql")):
        return uri
    raise RegistryError(
        f"tracking URI {uri!r} is not supported: MLflow 3 refuses the file store for the model "
        f"registry; use sqlite:///<absolute path>/mlflow.db (or an http(s):// tracking server)"
    )


def sqlite_uri(db_path: str | Path) -> str:
    return f"sqlite:///{Path(db_path).resolve()}"


class ModelRegistry:
    """The dtkd view of one MLflow tracking store + model registry."""

    def __init__(self, tracking_uri: Optional[str] = None, *, experiment: str = DEFAULT_EXPERIMENT):
        import mlflow

        self.tracking_uri = check_tracking_uri(tracking_uri or mlflow.get_tracking_uri())
        self.experiment = experiment
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # ------------------------------------------------------------------ experiment / runs

    def _default_artifact_location(self) -> Optional[str]:
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri[len("sqlite:///"):])
            return (db.parent / "artifacts").resolve().as_uri()
        return None

    def ensure_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(self.experiment, artifact_location=self._default_artifact_location())

    @contextlib.contextmanager
    def _run(self, run_name: str) -> Iterator[Any]:
        """A fluent MLflow run in this store. Inside an active run (e.g. ZenML's MLflow experiment
        tracker) it is a nested child run, which needs the same tracking URI."""
        import mlflow

        active = mlflow.active_run()
        if active is not None and mlflow.get_tracking_uri() != self.tracking_uri:
            raise RegistryError(
                f"an MLflow run is active on {mlflow.get_tracking_uri()!r}; register into that store "
                f"or end the run first (requested {self.tracking_uri!r})"
            )
        with self._using_store():
            exp_id = self.ensure_experiment()
            kwargs = {"nested": True} if active is not None else {"experiment_id": exp_id}
            with mlflow.start_run(run_name=run_name, **kwargs) as run:
                yield run

    # ------------------------------------------------------------------ lookups

    def _ref(self, mv) -> ModelVersionRef:
        return ModelVersionRef(
            name=mv.name, version=int(mv.version), model_uri=mv.source, run_id=mv.run_id,
            aliases=tuple(sorted(getattr(mv, "aliases", None) or ())), tags=dict(mv.tags or {}),
        )

    def get_version(self, registered_name: str, version_or_alias: Union[int, str]) -> ModelVersionRef:
        """A version by number (``3`` or ``"3"``) or by alias (``"challenger"``)."""
        from mlflow.exceptions import MlflowException

        key = str(version_or_alias)
        try:
            if key.isdigit():
                mv = self.client.get_model_version(registered_name, key)
            else:
                mv = self.client.get_model_version_by_alias(registered_name, key)
        except MlflowException as err:
            what = f"version {key}" if key.isdigit() else f"alias '{key}'"
            raise RegistryError(f"registered model '{registered_name}': {what} not found in "
                                f"{self.tracking_uri} ({err.message})") from None
        return self._ref(mv)

    def get_alias(self, registered_name: str, alias: str) -> Optional[ModelVersionRef]:
        """The version under ``alias``, or None when the alias (or the model) does not exist."""
        try:
            return self.get_version(registered_name, alias)
        except RegistryError:
            return None

    def get_champion(self, registered_name: str) -> Optional[ModelVersionRef]:
        return self.get_alias(registered_name, CHAMPION)

    def versions(self, registered_name: str) -> list[ModelVersionRef]:
        found = self.client.search_model_versions(f"name = '{registered_name}'")
        return sorted((self._ref(mv) for mv in found), key=lambda r: r.version)

    def run_metrics(self, ref: ModelVersionRef) -> dict[str, float]:
        """Metrics logged on the run that registered ``ref`` (what the pipeline measured)."""
        if not ref.run_id:
            return {}
        return dict(self.client.get_run(ref.run_id).data.metrics)

    def load_model(self, registered_name: str, alias_or_version: Union[int, str] = CHAMPION, *,
                   map_location: str = "cpu"):
        """Load the PyTorch module under an alias or version number (on CPU by default), as dtkd
        uses it: a version with a ``dtkd.architecture`` tag comes back as the eager dtkd model
        (feature taps, ``train()``), other exported ones as an inference-only graph, pickled
        (older) ones as they were saved. A consumer outside dtkd calls
        ``mlflow.pytorch.load_model`` and gets the exported graph."""
        import mlflow

        ref = self.get_version(registered_name, alias_or_version)
        with self._using_store():  # models:/m-... resolves through the tracking store too
            model = mlflow.pytorch.load_model(ref.uri, map_location=map_location)
        return _as_dtkd_module(ref, model)

    @contextlib.contextmanager
    def _using_store(self) -> Iterator[None]:
        import mlflow

        # set_tracking_uri also exports MLFLOW_TRACKING_URI: restoring the resolved default
        # (get_tracking_uri() before) left the process and its subprocesses pointing at
        # ./mlflow.db, so both URIs go back to what the variables said, unset included
        env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            if mlflow.active_run() is None:
                mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
                mlflow.set_registry_uri(env["MLFLOW_REGISTRY_URI"])
                for key, value in env.items():
                    os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)

    # ------------------------------------------------------------------ writes

    def register_candidate(
        self,
        model,
        *,
        registered_name: str,
        metrics: Mapping[str, float],
        params: Optional[Mapping[str, Any]] = None,
        tags: Optional[Mapping[str, str]] = None,
        dataset_fingerprint: str,
        artifacts: Optional[Mapping[str, str | Path]] = None,
        input_spec: Optional[Mapping[str, Any]] = None,
        pip_requirements: Optional[list[str]] = None,
        alias: str = CHALLENGER,
        run_name: Optional[str] = None,
        input_example: Any = None,
        build_options: Optional[Mapping[str, Any]] = None,
        teachers: Optional[Mapping[str, str]] = None,
    ) -> ModelVersionRef:
        """Log ``model`` with its metrics/params/tags/artifacts in a new run, register the logged
        model under ``registered_name`` and point ``alias`` (``challenger``) at the new version.

        ``dataset_fingerprint`` (e.g. :func:`dtkd_ops.data_version.data_version` ``.dvc_hash``) is
        stored on the run and the version so that metrics are only compared on the same data.
        ``input_spec`` (frames, sampling_rate, crop_size, mean, std) lets a later gate rebuild the
        test loader for this model. ``artifacts``: ``{artifact_dir: local file or folder}``.

        Deployable form (:mod:`dtkd_ops.packaging`): the model is exported with an input example
        of ``input_example`` or, by default, clips shaped by ``input_spec``; ``input_spec``'s
        ``model_name`` plus ``build_options`` (the config's ``overrides``) let dtkd rebuild the
        eager model; ``teachers`` (``{role: model}``) go on the model card.
        """
        import mlflow

        from dtkd_ops import packaging

        if alias == CHAMPION:
            raise RegistryError("register_candidate never sets 'champion'; promotion goes through the gate")
        if not dataset_fingerprint:
            raise RegistryError("register_candidate: dataset_fingerprint is required (got an empty value)")
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        other = {k: v for k, v in metrics.items() if k not in numeric}  # kept as metrics_extra.json
        for name, path in (artifacts or {}).items():
            if not Path(path).exists():
                raise RegistryError(f"register_candidate: artifact '{name}' not found at {path}")

        version_tags = {**{k: str(v) for k, v in (tags or {}).items()}, TAG_DATASET: dataset_fingerprint}
        if input_spec is not None:
            version_tags[TAG_INPUT_SPEC] = json.dumps(dict(input_spec), sort_keys=True)
        package = packaging.prepare(model, input_spec=input_spec, input_example=input_example,
                                    build_options=build_options)
        version_tags[packaging.TAG_SERIALIZATION] = (packaging.SERIALIZATION_PT2 if package
                                                     else packaging.SERIALIZATION_PICKLE)
        if package is not None and package.architecture is not None:
            version_tags[packaging.TAG_ARCHITECTURE] = json.dumps(package.architecture, sort_keys=True)
        requirements = pip_requirements or _default_requirements()
        with self._run(run_name or f"register-{registered_name}") as run:
            mlflow.log_params({k: _param(v) for k, v in (params or {}).items()})
            mlflow.set_tags(version_tags)
            info = _log_model(model, package, input_spec, requirements)
            mlflow.log_metrics(numeric)
            if other:
                mlflow.log_dict(json.loads(json.dumps(other, default=str)), "metrics_extra.json")
            for name, path in (artifacts or {}).items():
                path = Path(path)
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=name)
                else:
                    mlflow.log_artifact(str(path), artifact_path=name)
            run_id = run.info.run_id
        self._ensure_registered_model(registered_name)
        card = packaging.model_card(
            registered_name=registered_name, role=version_tags.get("dtkd.role"), metrics=numeric,
            params=params or {}, tags=version_tags, dataset_fingerprint=dataset_fingerprint, teachers=teachers,
            input_spec=input_spec, package=package, requirements=requirements)
        with self._using_store():  # the registry resolves models:/m-... through the global tracking URI
            # model_id: a tracking *server* checks that a models:/m-... source names that logged model
            mv = self.client.create_model_version(registered_name, source=info.model_uri, run_id=run_id,
                                                  tags=version_tags, description=card, model_id=info.model_id)
        self.client.set_registered_model_alias(registered_name, alias, mv.version)
        log.info("registered %s v%s (%s) as %s", registered_name, mv.version, info.model_uri, alias)
        return self.get_version(registered_name, mv.version)

    def _ensure_registered_model(self, registered_name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(registered_name)
        except MlflowException:
            try:
                self.client.create_registered_model(registered_name,
                                                    description="dtkd video action recognition model")
            except MlflowException as err:  # created concurrently by another process
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def tag_version(self, ref: ModelVersionRef, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            text = str(value)
            if len(text) > _TAG_MAX:
                text = text[: _TAG_MAX - 20] + "\n...[truncated]"
            self.client.set_model_version_tag(ref.name, str(ref.version), key, text)

    @contextlib.contextmanager
    def champion_lock(self, registered_name: str) -> Iterator[None]:
        """One champion move at a time: the gate reads the champion, checks it is still the one
        it compared against, and moves the alias inside this block, so two concurrent promotes
        cannot both win (MLflow has no compare-and-set for aliases).

        * ``DTKD_LOCK_URL=postgresql://...`` (the team stack sets it: dtkd_ops.services): a
          PostgreSQL advisory lock, held by the database for every process on every machine that
          promotes into the shared registry.
        * A local sqlite store: a file lock beside its database (every process on the machine).
        * Any other store without ``DTKD_LOCK_URL``: refused, rather than promoting unlocked."""
        lock_url = os.environ.get("DTKD_LOCK_URL")
        if lock_url:
            with _advisory_lock(lock_url, f"dtkd.champion:{registered_name}"):
                yield
            return
        if not self.tracking_uri.startswith("sqlite:///"):
            raise RegistryError(f"cannot lock the champion of {registered_name} on {self.tracking_uri}: set "
                                "DTKD_LOCK_URL to a PostgreSQL URL every promoter shares (the team stack's "
                                "`python -m dtkd_ops.services env` prints it)")
        import fcntl

        db = Path(self.tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in registered_name)
        with open(db.parent / f".{db.name}.{safe}.champion.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def set_champion(self, registered_name: str, version: int) -> ModelVersionRef:
        """Point ``champion`` at ``version``. Only the gate should call this. The replaced
        champion is recorded on the new one first; the alias update is the last, single write."""
        new = self.get_version(registered_name, version)  # fails before anything is written
        old = self.get_champion(registered_name)
        if old is not None and old.version == new.version:
            return new
        self.tag_version(new, {TAG_PREVIOUS_CHAMPION: old.version if old else "none"})
        self.client.set_registered_model_alias(registered_name, CHAMPION, str(new.version))
        log.info("champion of %s: v%s -> v%s", registered_name, old.version if old else None, new.version)
        return self.get_version(registered_name, new.version)

    def rollback_champion(self, registered_name: str) -> ModelVersionRef:
        """Move ``champion`` back to the version it replaced (recorded by :meth:`set_champion`)."""
        current = self.get_champion(registered_name)
        if current is None:
            raise RegistryError(f"registered model '{registered_name}' has no champion to roll back")
        previous = current.tags.get(TAG_PREVIOUS_CHAMPION)
        if not previous or previous == "none":
            raise RegistryError(f"{current}: no previous champion recorded; nothing to roll back to")
        target = self.get_version(registered_name, previous)
        self.client.set_registered_model_alias(registered_name, CHAMPION, str(target.version))
        return self.get_version(registered_name, target.version)


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def _default_requirements() -> list[str]:
    """A consumer's install: mlflow (the loader), torch, numpy; see packaging.model_requirements."""
    from dtkd_ops.packaging import model_requirements

    return model_requirements()


def _log_model(model, package, input_spec: Optional[Mapping[str, Any]], requirements: list[str]):
    """Log ``package`` as MLflow ``pt2`` and read it back: registration fails (the run is marked
    failed) unless it predicts like the eager model. Without a package, the pickled module."""
    import mlflow

    from dtkd_ops import packaging

    if package is None:
        log.warning("registering %s pickled: no input_spec/input_example to export it with (the "
                    "model then needs its code to load)", type(model).__name__)
        return mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                        pip_requirements=requirements)
    info = mlflow.pytorch.log_model(
        package.model, name="model", serialization_format="pt2", input_example=package.example,
        signature=package.signature, pip_requirements=requirements, metadata=package.metadata(input_spec),
        validate_serving_input=False)  # MLflow's check only warns and loads it once more; ours fails
    diff = packaging.verify_loaded(package, mlflow.pytorch.load_model(info.model_uri))
    mlflow.set_tag("dtkd.export_max_abs_diff", f"{diff:.3g}")
    return info


def _as_dtkd_module(ref: ModelVersionRef, model):
    """The loaded model as dtkd's code uses it (see :meth:`ModelRegistry.load_model`)."""
    from dtkd_ops import packaging

    if not packaging.is_exported(model):
        return model
    architecture = ref.tags.get(packaging.TAG_ARCHITECTURE)
    if architecture:
        return packaging.rebuild(json.loads(architecture), model.state_dict())
    return packaging.inference_only(model)


@contextlib.contextmanager
def _advisory_lock(url: str, key: str) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock on ``key`` (hashed to a bigint by the server);
    released on exit, or by the server when this process dies with it held."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
    finally:
        conn.close()


# ---------------------------------------------------------------------- function API


def register_candidate(model, *, registered_name: str, metrics: Mapping[str, float],
                       params: Optional[Mapping[str, Any]] = None, tags: Optional[Mapping[str, str]] = None,
                       dataset_fingerprint: str, artifacts: Optional[Mapping[str, str | Path]] = None,
                       tracking_uri: Optional[str] = None, **kwargs: Any) -> ModelVersionRef:
    """See :meth:`ModelRegistry.register_candidate`; ``tracking_uri`` None = MLflow's current."""
    return ModelRegistry(tracking_uri).register_candidate(
        model, registered_name=registered_name, metrics=metrics, params=params, tags=tags,
        dataset_fingerprint=dataset_fingerprint, artifacts=artifacts, **kwargs)


def set_alias(registered_name: str, alias: str, version: Union[int, str], *,
              tracking_uri: Optional[str] = None) -> ModelVersionRef:
    """Point ``alias`` at ``version``. ``champion`` goes through :meth:`ModelRegistry.set_champion`
    (the replaced champion is recorded, for rollback); prefer :func:`dtkd_ops.gate.promote_if_better`."""
    reg = ModelRegistry(tracking_uri)
    if alias == CHAMPION:
        return reg.set_champion(registered_name, int(version))
    ref = reg.get_version(registered_name, version)
    reg.client.set_registered_model_alias(registered_name, alias, str(ref.version))
    return reg.get_version(registered_name, ref.version)


def load_model(registered_name: str, alias: Union[int, str] = CHAMPION, *, tracking_uri: Optional[str] = None):
    return ModelRegistry(tracking_uri).load_model(registered_name, alias)


def get_champion(registered_name: str, *, tracking_uri: Optional[str] = None) -> Optional[ModelVersionRef]:
    return ModelRegistry(tracking_uri).get_champion(registered_name)
