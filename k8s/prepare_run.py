"""Prepare a distillation run directory on the shared volume, then exec the training command.

    python k8s/prepare_run.py --run-dir /data/runs/R --config configs/paper_hmdb51.yaml \
        --overlay k8s/zenml-run-k8s.yaml --teacher cnn=models:/dtkd-teacher-hmdb51-cnn@champion \
        --teacher vit=models:/... -- torchrun -m dtkd.launch --config /data/runs/R/run.yaml ...

The entry point of the TrainJob and PyTorchJob pods (k8s/training/); the image carries it at
/opt/dtkd/k8s/prepare_run.py. Every node runs it, possibly at the same moment, and a restarted
pod runs it again, so each write is atomic and each teacher is fetched once per run:

- ``RUN/run.yaml``: the run config merged with the Kubernetes overlay (``dtkd_ops.runconfig``),
  so ``dtkd.launch`` reads the data from the same /data paths as the ZenML step pods;
- ``RUN/teachers/<role>.pt``: the teacher's state dict from the MLflow registry
  (``dtkd_ops.pretrained.fetch_weights``, tracking server from ``MLFLOW_TRACKING_URI``). The first
  node to finish links its file in place; later ones, and restarts, keep that file, so every rank
  and every resumed attempt distils from the same teacher even if the alias moves meanwhile.
  ``RUN/teachers/<role>.source`` names the registry version it came from.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import yaml


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_run_config(run_dir: Path, config: str, overlays: Sequence[str]) -> Path:
    from dtkd_ops.runconfig import merge_files

    out = run_dir / "run.yaml"
    _atomic_write_text(out, yaml.safe_dump(merge_files([config, *overlays]), sort_keys=False))
    return out


def fetch_teacher(run_dir: Path, role: str, uri: str, tracking_uri: Optional[str]) -> Path:
    """``RUN/teachers/<role>.pt`` from the registry ``uri``, unless a node already put it there."""
    target = run_dir / "teachers" / f"{role}.pt"
    if target.is_file():
        return target
    from dtkd_ops.pretrained import fetch_weights

    # Each node fetches into its own cache dir: fetch_weights writes <name>-v<version>-<id>.pt, and two
    # nodes may resolve the alias to different versions if it moves between their look-ups.
    target.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
    fetched = fetch_weights(uri, tracking_uri=tracking_uri, cache_dir=cache)
    try:
        os.link(fetched, target)          # atomic create-if-absent: exactly one node wins
        _atomic_write_text(target.with_suffix(".source"), f"{uri} -> {fetched.stem}\n")
    except FileExistsError:
        pass
    fetched.unlink(missing_ok=True)
    os.rmdir(cache)
    return target


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="prepare_run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--config", required=True, help="the run config (in the image: /opt/dtkd/configs/...)")
    p.add_argument("--overlay", action="append", default=[], help="merged over --config, in order")
    p.add_argument("--teacher", action="append", default=[], metavar="ROLE=models:/NAME@ALIAS",
                   help="a teacher to fetch from the MLflow registry into RUN/teachers/ROLE.pt")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after `--`: the command to exec")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    for item in args.teacher:
        role, sep, uri = item.partition("=")
        if not sep or not role or not uri.startswith("models:/"):
            p.error(f"--teacher expects ROLE=models:/<name>@<alias> or ROLE=models:/<name>/<version>, got {item!r}")
    return args


def prepare(args: argparse.Namespace) -> list[str]:
    """Write the run directory; return the command to exec."""
    write_run_config(args.run_dir, args.config, args.overlay)
    teachers = [item.partition("=")[::2] for item in args.teacher]
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")   # read once: MLflow's client may rewrite it
    if teachers and not tracking_uri:
        raise SystemExit("prepare_run.py: MLFLOW_TRACKING_URI is not set; the teachers come from the MLflow registry")
    for role, uri in teachers:
        path = fetch_teacher(args.run_dir, role, uri, tracking_uri)
        print(f"teacher {role}: {path} ({uri})", flush=True)
    return args.command


def main(argv: Optional[Sequence[str]] = None) -> None:
    command = prepare(parse_args(argv))
    if not command:
        return
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
