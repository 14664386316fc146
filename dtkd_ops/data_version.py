"""DVC data versioning helpers: which data a run used, as a hash that ZenML and MLflow can record.

DVC owns the data stages (``dvc.yaml``: generate -> manifest -> quality -> store). After
``dvc repro`` the lock file holds the md5 of every stage output; :func:`data_version` condenses
the cached data outputs (plus any ``*.dvc`` files from ``dvc add``) into one ``dvc_hash``.
Identical data gives the identical hash on any machine and checkout path; any changed byte of a
tracked output changes it.

It names the data a run used (tags on runs and models) and drives the retraining decision; the
pipeline's cache follows the data's content instead (``steps/materializers.py``), which also sees
data that DVC does not track or that changed outside it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
LOCK_FILE = "dvc.lock"
REPORT = "report"  # dvc.yaml output annotation (`type: report`) of non-data outputs


class DataVersionError(RuntimeError):
    """The data version cannot be determined; the message names the repository/stage/output."""


class NotTrackedError(DataVersionError):
    """Not a DVC project, or its outputs were never reproduced (no recorded hash)."""


@dataclass(frozen=True)
class DataVersion:
    dvc_hash: Optional[str]  # sha256 (16 hex) over the sorted (path, md5) of the tracked outputs
    git_rev: Optional[str]  # HEAD of the repository ("<sha>-dirty" when dvc.yaml/dvc.lock/*.dvc changed)
    lock_path: Optional[Path]  # dvc.lock (None when only .dvc files track data)
    outs: dict[str, str] = field(default_factory=dict)  # tracked output path -> DVC md5

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lock_path"] = str(self.lock_path) if self.lock_path else None
        return d

    def tags(self, prefix: str = "dtkd.data.") -> dict[str, str]:
        """Flat string tags for MLflow runs/model versions and ZenML metadata."""
        return {f"{prefix}dvc_hash": self.dvc_hash or "none", f"{prefix}git_rev": self.git_rev or "none"}


def _is_report(out) -> bool:
    annot = getattr(out, "annot", None)
    typed = annot is not None and (annot.type == REPORT or REPORT in (annot.labels or []))
    return typed or not out.use_cache or out.metric or out.plot


def tracked_outs(repo_dir: PathLike, *, stages: Optional[Iterable[str]] = None,
                 paths: Optional[Iterable[PathLike]] = None, include_reports: bool = False) -> dict[str, str]:
    """``{output path: DVC md5}`` of the DVC project's *data* outputs, as recorded in ``dvc.lock``
    and ``*.dvc`` files (read through DVC's own API, templating resolved).

    Reports are left out unless ``include_reports``: outputs annotated ``type: report`` (or
    labelled ``report``) in dvc.yaml, metrics, plots and ``cache: false`` outputs. They hold
    timestamps, and re-running a stage on unchanged data must keep the data version.
    ``stages``: only the outputs of these pipeline stages. ``paths``: only outputs at or inside these
    paths (relative to the repository, or absolute): the data one run config uses, when the
    repository tracks several datasets (one DVC pipeline per config, ``datasets/*/dvc.yaml``)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    repo = Path(repo_dir).resolve()
    try:
        dvc_repo = Repo(str(repo))
    except DvcException as err:
        raise NotTrackedError(f"{repo}: not a DVC project ({err})") from None
    try:
        all_stages = list(dvc_repo.index.stages)
        named = {getattr(st, "name", None) for st in all_stages} - {None}
        if stages is not None:
            unknown = sorted(set(stages) - named)
            if unknown:
                raise DataVersionError(f"{repo}: no stage(s) {unknown} in dvc.yaml (stages: {sorted(named)})")
        wanted = None if paths is None else [_rel(repo / p, repo).rstrip("/") for p in paths]
        outs = {}
        for st in all_stages:
            if stages is not None and getattr(st, "name", None) not in set(stages):
                continue
            for out in st.outs:
                if not include_reports and _is_report(out):
                    continue
                path = _rel(Path(st.wdir) / out.def_path, repo)
                if wanted is not None and not any(path == w or path.startswith(w + "/") for w in wanted):
                    continue
                value = out.hash_info.value if out.hash_info else None
                if not value:
                    raise NotTrackedError(
                        f"{repo}: output '{out.def_path}' of {st.addressing} has no recorded hash; "
                        f"run `dvc repro` (or `dvc commit`) first")
                outs[path] = str(value)
        return outs
    finally:
        dvc_repo.close()


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(os.path.normpath(path), base).replace(os.sep, "/")


def _hash_outs(outs: dict[str, str]) -> str:
    text = "\n".join(f"{p}\t{m}" for p, m in sorted(outs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git(repo: Path, *args: str) -> Optional[str]:
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_revision(repo: PathLike) -> Optional[str]:
    """HEAD's sha, suffixed ``-dirty`` when DVC's files differ from it; None outside git."""
    repo = Path(repo)
    rev = _git(repo, "rev-parse", "HEAD")
    if rev is None:
        return None
    # pathspecs match at any depth: the per-config pipelines live in datasets/<name>/
    status = _git(repo, "status", "--porcelain", "--", "*dvc.yaml", "*" + LOCK_FILE, "*params.yaml", "*.dvc")
    return f"{rev}-dirty" if status else rev


def data_version(repo_dir: PathLike = ".", *, stages: Optional[Sequence[str]] = None,
                 paths: Optional[Sequence[PathLike]] = None, strict: bool = False) -> DataVersion:
    """The data version of the DVC project at ``repo_dir``: a hash over :func:`tracked_outs`
    (``stages``: only those stages' outputs, e.g. ``["manifest"]``; ``paths``: only outputs at or
    inside those paths), the git revision and the lock file. Not a DVC project, or outputs never reproduced: ``dvc_hash`` is None, or
    :class:`DataVersionError` with ``strict=True``."""
    repo = Path(repo_dir).resolve()
    if not repo.is_dir():
        raise DataVersionError(f"{repo}: not a directory")
    try:
        outs = tracked_outs(repo, stages=stages, paths=paths)
    except NotTrackedError:
        if strict:
            raise
        outs = {}
    lock = repo / LOCK_FILE
    return DataVersion(
        dvc_hash=_hash_outs(outs) if outs else None,
        git_rev=git_revision(repo),
        lock_path=lock if lock.is_file() else None,
        outs=outs,
    )


# ----------------------------------------------------------------------------- DVC command line


def dvc(repo_dir: PathLike, *args: str, check: bool = True,
        timeout: Optional[float] = 600) -> subprocess.CompletedProcess:
    """Run ``dvc <args>`` in ``repo_dir`` (this interpreter's DVC; analytics off). On failure raise
    with the command and DVC's own message."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATE_CHECK": "1"}
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.run(cmd, cwd=str(repo_dir), env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise DataVersionError(f"`dvc {' '.join(args)}` failed in {repo_dir} (exit {proc.returncode}):\n"
                               f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def add_local_remote(repo_dir: PathLike, path: PathLike, *, name: str = "local", default: bool = True) -> None:
    """Register a directory as a DVC remote (``-d``: the default remote)."""
    args = ["remote", "add", "--force"] + (["-d"] if default else []) + [name, str(Path(path).resolve())]
    dvc(repo_dir, *args)
