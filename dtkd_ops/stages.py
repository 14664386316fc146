"""Commands of the DVC data stages (the dvc.yaml files that :mod:`dtkd_ops.dvc_stages` derives
from a run config; each reads only its pipeline's ``params.yaml``):

    python -m dtkd_ops.stages generate --params datasets/default/params.yaml [--section pretraining_data]
    python -m dtkd_ops.stages manifest --params ... --out data/default/manifest.parquet
    python -m dtkd_ops.stages quality  --params ... --manifest data/default/manifest.parquet --out data/default/quality
    python -m dtkd_ops.stages store    --params ... --manifest data/default/quality/clean_manifest.parquet

They call the same functions as the ZenML pipeline's steps (``prepare_manifest``, ``rules_for`` +
``run_quality_gate``, ``build_store``) with the same sections of the same run config, so both
routes make the same manifest, apply the same quality rules and build the same store. Stage
commands run from the repository root; manifests on disk hold paths relative to it, so a DVC
output hashes the same in any checkout (:func:`read_manifest` makes them absolute again).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from dtkd_ops._io import load_yaml_mapping, read_manifest, write_manifest

REPORT_DIR = "report"  # beside the quality stage's outputs, not a DVC output (timestamps)


def data_config(params_path: str | Path, section: str = "data"):
    """The DataConfig under ``section`` of a derived params.yaml (errors name file and key)."""
    from pydantic import ValidationError

    from dtkd.data.config import DataConfig
    from dtkd_ops._io import format_validation_error

    raw = load_yaml_mapping(params_path, section=section)
    try:
        return DataConfig.model_validate(raw)
    except ValidationError as err:
        raise ValueError(format_validation_error(err, source=str(params_path), prefix=section)) from None


def cmd_generate(args) -> int:
    from dtkd.data.synthetic import generate_synthetic

    cfg = data_config(args.params, args.section)
    if cfg.dataset != "synthetic":
        raise ValueError(f"{args.params}: {args.section}.dataset is {cfg.dataset!r}; only 'synthetic' is generated")
    generate_synthetic(cfg.root, **cfg.synthetic.model_dump(), overwrite=True)
    print(f"{cfg.root}: synthetic {cfg.synthetic.vocabulary} set, {cfg.synthetic.num_classes} classes")
    return 0


def cmd_manifest(args) -> int:
    from dtkd.data import prepare_manifest

    cfg = data_config(args.params)
    # What the pipeline's ingest step does (the synthetic set: found as the generate stage left it).
    manifest = prepare_manifest(cfg, workers=args.workers)
    write_manifest(manifest, args.out)
    print(f"{args.out}: {len(manifest)} videos, {manifest['label'].nunique()} labels, "
          f"{manifest['split'].value_counts().to_dict()}")
    return 0


def cmd_quality(args) -> int:
    from dtkd_ops.quality import rules_for, run_quality_gate

    cfg = data_config(args.params)
    min_frames = int(load_yaml_mapping(args.params).get("min_frames") or 1)
    manifest = read_manifest(args.manifest)
    rules = rules_for(cfg, min_frames=min_frames)  # what the pipeline's validate step does
    out = Path(args.out)
    report = run_quality_gate(manifest, rules, docs_dir=out / REPORT_DIR / "data_docs", workers=args.workers,
                              data_root=cfg.root)
    report.write(out, relative_to=".", reports_dir=out / REPORT_DIR)
    print(report.summary())
    return 0 if report.success else 1


def cmd_store(args) -> int:
    from dtkd.data import build_store

    cfg = data_config(args.params)
    if not cfg.store.enabled or cfg.store.dir is None:
        raise ValueError(f"{args.params}: data.store.enabled is false; the store stage has nothing to build")
    manifest = read_manifest(args.manifest)
    store = build_store(manifest, cfg.store.dir, short_side=cfg.store.short_side, overwrite=True)
    print(f"{cfg.store.dir}: {len(manifest)} videos pre-decoded ({type(store).__name__})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtkd_ops.stages", description="dtkd DVC data stages")
    sub = parser.add_subparsers(dest="stage", required=True)
    commands = {"generate": cmd_generate, "manifest": cmd_manifest, "quality": cmd_quality, "store": cmd_store}
    parsers = {name: sub.add_parser(name) for name in commands}
    for p in parsers.values():
        p.add_argument("--params", required=True, help="the pipeline's derived params.yaml")
    parsers["generate"].add_argument("--section", default="data", help="data | pretraining_data")
    parsers["manifest"].add_argument("--out", required=True)
    parsers["manifest"].add_argument("--workers", type=int, default=1)
    parsers["quality"].add_argument("--manifest", required=True)
    parsers["quality"].add_argument("--out", required=True)
    parsers["quality"].add_argument("--workers", type=int, default=1)
    parsers["store"].add_argument("--manifest", required=True)
    args = parser.parse_args(argv)
    try:
        return commands[args.stage](args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"dtkd_ops.stages {args.stage}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
