"""Merge ZenML run-config YAML files (``zenml pipeline run`` takes a single ``-c``).

    python -m dtkd_ops.runconfig configs/default.yaml k8s/zenml-run-k8s.yaml -o /tmp/run-k8s.yaml

Mappings merge key by key (later files win), anything else is replaced. Top-level keys starting
with ``x-`` are YAML-anchor holders and are dropped from the result.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from dtkd_ops._io import atomic_write_text, load_yaml_mapping


def deep_merge(base: Any, overlay: Any) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = deep_merge(base[key], value) if key in base else value
        return out
    return overlay


def merge_files(paths: Sequence[str | Path]) -> dict:
    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, load_yaml_mapping(path))
    return {k: v for k, v in merged.items() if not str(k).startswith("x-")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtkd_ops.runconfig", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="run-config YAML files, base first")
    parser.add_argument("-o", "--out", default=None, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = yaml.safe_dump(merge_files(args.files), sort_keys=False)
    except (FileNotFoundError, ValueError) as err:
        print(f"runconfig: error: {err}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
