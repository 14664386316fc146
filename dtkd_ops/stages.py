"""Commands of the DVC data stages that dtkd.data has no command line for (see dvc.yaml).

    python -m dtkd_ops.stages manifest --config configs/data.yaml
    python -m dtkd_ops.stages quality  --config configs/data.yaml --out data/quality
    python -m dtkd_ops.stages store    --config configs/data.yaml --manifest data/quality/clean_manifest.parquet

``generate`` is dtkd's own ``python -m dtkd.data.synthetic``. They call the documented Python API of
``dtkd.data`` (``build_manifest``, ``build_store``, ``DataConfig``) and run from the repository root,
like every DVC stage command. Manifests on disk hold paths relative to that root, so a DVC output
hashes the same in any checkout; :func:`read_manifest` makes them absolute again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from dtkd_ops._io import load_yaml_mapping, read_manifest, write_manifest


def data_config(config_path: str | Path):
    from pydantic import ValidationError

    from dtkd.data.config import DataConfig
    from dtkd_ops._io import format_validation_error

    raw = load_yaml_mapping(config_path, section="data")
    try:
        return DataConfig.model_validate(raw)
    except ValidationError as err:
        raise ValueError(format_validation_error(err, source=str(config_path), prefix="data")) from None


def cmd_manifest(args) -> int:
    from dtkd.data import build_manifest
    from dtkd.data.manifest import carve_validation

    cfg = data_config(args.config)
    out = args.out or load_yaml_mapping(args.config).get("manifest", "data/manifest.parquet")
    manifest = build_manifest(cfg.dataset, cfg.root, split=cfg.split, on_error=cfg.on_bad_video)
    manifest = carve_validation(manifest, cfg.val.fraction, seed=cfg.val.seed)  # as the pipeline's ingest does
    write_manifest(manifest, out)
    print(f"{out}: {len(manifest)} videos, {manifest['label'].nunique()} classes, "
          f"{manifest['split'].value_counts().to_dict()}")
    return 0


def cmd_quality(args) -> int:
    from dtkd_ops.quality import QualityRules, rules_for, run_quality_gate

    cfg = data_config(args.config)
    manifest_path = args.manifest or load_yaml_mapping(args.config).get("manifest", "data/manifest.parquet")
    manifest = read_manifest(manifest_path)
    section = load_yaml_mapping(args.config).get("quality") or {}
    unknown = set(section) - set(QualityRules.model_fields)
    if unknown:
        raise ValueError(f"{args.config}: quality: unknown key(s) {sorted(unknown)}")
    overrides = {k: v for k, v in section.items() if v is not None}  # null = derive from the data config
    rules = rules_for(cfg, manifest, **overrides)
    out = Path(args.out)
    report = run_quality_gate(manifest, rules, docs_dir=out / "data_docs", workers=args.workers, data_root=cfg.root)
    report.write(out, relative_to=".")  # relative paths on disk, like the input manifest
    print(report.summary())
    return 0 if report.success else 1


def cmd_store(args) -> int:
    from dtkd.data import build_store

    cfg = data_config(args.config)
    if not cfg.store.enabled or cfg.store.dir is None:
        raise ValueError(f"{args.config}: data.store.enabled is false; the store stage has nothing to build")
    manifest = read_manifest(args.manifest)
    store = build_store(manifest, cfg.store.dir, short_side=cfg.store.short_side, overwrite=True)
    print(f"{cfg.store.dir}: {len(manifest)} videos pre-decoded ({type(store).__name__})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtkd_ops.stages", description="dtkd DVC data stages")
    sub = parser.add_subparsers(dest="stage", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("--config", default="configs/data.yaml")
    m.add_argument("--out", default=None)
    q = sub.add_parser("quality")
    q.add_argument("--config", default="configs/data.yaml")
    q.add_argument("--manifest", default=None)
    q.add_argument("--out", default="data/quality")
    q.add_argument("--workers", type=int, default=1)
    s = sub.add_parser("store")
    s.add_argument("--config", default="configs/data.yaml")
    s.add_argument("--manifest", default="data/quality/clean_manifest.parquet")
    args = parser.parse_args(argv)
    try:
        return {"manifest": cmd_manifest, "quality": cmd_quality, "store": cmd_store}[args.stage](args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"dtkd_ops.stages {args.stage}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
