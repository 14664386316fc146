"""The ``dtkd`` command line (MLOps side).

    dtkd gate     --model NAME --candidate VERSION|ALIAS [--tracking-uri URI] [--gate-config configs/gate.yaml]
                  [--manifest MANIFEST] [--evaluator MODULE:FACTORY] [--json OUT]
    dtkd promote  (same options)  runs the gate and moves `champion` only when the candidate is promoted
    dtkd rollback --model NAME [--tracking-uri URI]
    dtkd quality  --manifest data/manifest.parquet [--rules configs/data.yaml] [--docs-dir DIR] [--out DIR]
    dtkd data-version [--repo .]
    dtkd export   --model NAME [--version champion|N|ALIAS] [--manifest MANIFEST] [--out DIR] [--opset 18]
                  [--atol 1e-4] [--threads 1] [--int8] [--no-log] [--json OUT]

The gate loads the candidate and the champion and measures both here, on the same test clips:
the ``--manifest`` test split, else the test manifest logged with the candidate when it was
registered (the clips the pipeline's gate used). Exit status of ``gate``/``promote``: 0 promoted,
3 no significant change, 4 significantly worse, 5 refused, 6 lost a concurrent promotion, 2 could
not run (``dtkd gate --help``). ``quality``: 0 passed, 1 failed, 2 could not run. ``export``
(TorchScript + ONNX, parity on the test clips, latency; docs/export.md): 0 exported and logged,
1 an export outside the parity tolerance (nothing logged), 2 could not run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from dtkd_ops.gate import EXIT_CODES

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
EXIT_PROMOTED, EXIT_NO_CHANGE, EXIT_WORSE, EXIT_REFUSED, EXIT_LOST_RACE = (
    EXIT_CODES[k] for k in ("promoted", "no_change", "worse", "refused", "lost_race"))
GATE_EXIT_HELP = f"""exit status:
  {EXIT_PROMOTED}  promoted (gate: would be promoted)
  {EXIT_NO_CHANGE}  no significant change (within noise, below the minimum effect, or already champion)
  {EXIT_WORSE}  significantly worse than the champion
  {EXIT_REFUSED}  refused: data mismatch, over budget, or a figure missing or not finite
  {EXIT_LOST_RACE}  promote only: lost a concurrent promotion (champion moved meanwhile); re-run
  {EXIT_ERROR}  could not run (arguments, config, registry lookup, evaluation error)
CI: treat {EXIT_PROMOTED} and {EXIT_NO_CHANGE} as success, anything else as failure."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the local stack's ``sqlite:///$DTKD_HOME/mlflow/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = Path(os.environ.get("DTKD_HOME", ".dtkd")).resolve()
    return f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: "
                   "$MLFLOW_TRACKING_URI or sqlite:///$DTKD_HOME/mlflow/mlflow.db)")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--candidate", default="challenger", help="version number or alias (default: challenger)")
    p.add_argument("--gate-config", default="configs/gate.yaml")
    p.add_argument("--manifest", default=None, help="judge on this manifest's test split (default: the test "
                   "manifest logged with the candidate)")
    p.add_argument("--split", default="test")
    p.add_argument("--device", default="cpu", help="device for the accuracy pass (latency: gate config)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--evaluator", default=None,
                   help="MODULE:FACTORY; FACTORY(manifest_or_None, gate_cfg, registry) -> evaluator with "
                        ".scores(model, ref) and .latency_input(ref)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the decision as JSON here")


def _gate_parser(sub, name: str, text: str) -> None:
    _gate_args(sub.add_parser(name, help=text, description=text, epilog=GATE_EXIT_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtkd", description="dtkd MLOps: quality gate, promotion gate, data version")
    sub = parser.add_subparsers(dest="command", required=True)
    _gate_parser(sub, "gate", "judge a candidate against the champion on the same clips (moves nothing)")
    _gate_parser(sub, "promote", "run the gate; move 'champion' to the candidate only when it is promoted")
    rb = sub.add_parser("rollback", help="move 'champion' back to the version it replaced")
    rb.add_argument("--tracking-uri", default=None)
    rb.add_argument("--model", required=True)
    q = sub.add_parser("quality", help="run the data quality gate over a manifest")
    q.add_argument("--manifest", required=True, help="manifest .parquet (or .csv)")
    q.add_argument("--rules", default="configs/data.yaml", help="YAML with the rules")
    q.add_argument("--section", default="quality", help="YAML section with the rules ('' = top level)")
    q.add_argument("--expected-labels", default=None, help="comma-separated label set (overrides the rules)")
    q.add_argument("--docs-dir", default=None, help="build Great Expectations Data Docs here")
    q.add_argument("--out", default=None, help="write report.json, summary.txt, quarantine.csv, clean_manifest.parquet")
    q.add_argument("--workers", type=int, default=1)
    dv = sub.add_parser("data-version", help="print the DVC data version (JSON)")
    dv.add_argument("--repo", default=".")
    _export_args(sub.add_parser("export", help="export a registered model to TorchScript and ONNX, check and time it"))
    return parser


def _export_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Export a registered version to TorchScript and ONNX (dynamic batch), check both against the "
                     "PyTorch model on its test clips (max abs logit difference, top-1 agreement), time all three "
                     "on CPU, and log the files to a new MLflow run tagged with the version. Exit 0 exported and "
                     "logged, 1 outside the parity tolerance (nothing logged), 2 could not run.")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--version", default="champion", help="version number or alias (default: champion, what ships)")
    p.add_argument("--manifest", default=None, help="check on this manifest's split (default: the test manifest "
                   "logged with the version)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None, help="write the files under DIR/<model>-v<version>/ (default: "
                   "$DTKD_HOME/exports)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: dtkd.eval.export.DEFAULT_OPSET, 18)")
    p.add_argument("--atol", type=float, default=None, help="max abs logit difference allowed (default 1e-4)")
    p.add_argument("--min-agreement", type=float, default=None, help="top-1 agreement required (default 1.0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every format's latency (default 1)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10, help="timed batch-1 forwards per format; the median counts")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-clips", type=int, default=None, help="check on the first N clips only")
    p.add_argument("--int8", action="store_true", help="also report int8 dynamic quantisation (Linear layers): "
                   "top-1 delta on the split and latency")
    p.add_argument("--no-log", dest="log", action="store_false", help="export and check only; log nothing")
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")


def _evaluator(args, cfg, registry):
    from dtkd_ops.evaluation import TestSplitEvaluator, gated_test_manifest, recorded_classes, recorded_protocol

    if args.evaluator:
        module, _, name = args.evaluator.partition(":")
        if not name:
            raise ValueError(f"--evaluator must be MODULE:FACTORY, got {args.evaluator!r}")
        factory = getattr(importlib.import_module(module), name)
        return factory(args.manifest, cfg, registry)
    candidate = registry.get_version(args.model, args.candidate)
    manifest = args.manifest or gated_test_manifest(registry, candidate)
    classes = recorded_classes(candidate)
    return TestSplitEvaluator(manifest, split=args.split, evaluation=recorded_protocol(candidate, args.batch_size),
                              device=args.device, input_shape=cfg.latency.input_shape,
                              num_classes=len(classes) if classes else None, metric=cfg.metric)


def _cmd_gate(args, *, promote: bool) -> int:
    from dtkd_ops._io import atomic_write_json
    from dtkd_ops.gate import load_gate_config, promote_if_better
    from dtkd_ops.registry import ModelRegistry

    cfg = load_gate_config(args.gate_config)
    registry = ModelRegistry(args.tracking_uri or default_tracking_uri())
    evaluator = _evaluator(args, cfg, registry)
    decision = promote_if_better(args.model, args.candidate, evaluator, cfg, registry=registry, dry_run=not promote)
    print(decision.report)
    if promote:
        print(f"champion -> {decision.candidate}" if decision.promoted else "champion unchanged")
    print(f"gate decision: {decision.tag} (exit {decision.exit_code})")
    if args.json_out:
        atomic_write_json(args.json_out, decision.to_dict())
    return decision.exit_code


def _cmd_rollback(args) -> int:
    from dtkd_ops.registry import ModelRegistry

    ref = ModelRegistry(args.tracking_uri or default_tracking_uri()).rollback_champion(args.model)
    print(f"champion -> {ref}")
    return EXIT_OK


def _cmd_quality(args) -> int:
    from dtkd_ops._io import read_manifest
    from dtkd_ops.quality import load_quality_rules, run_quality_gate

    overrides = {}
    if args.expected_labels:
        overrides["expected_labels"] = [s.strip() for s in args.expected_labels.split(",") if s.strip()]
        overrides["expected_num_classes"] = None
    rules = load_quality_rules(args.rules, section=args.section or None, **overrides)
    report = run_quality_gate(read_manifest(args.manifest), rules, docs_dir=args.docs_dir, workers=args.workers)
    print(report.summary())
    if args.out:
        report.write(args.out)
    return EXIT_OK if report.success else EXIT_FAILED


def _cmd_data_version(args) -> int:
    from dtkd_ops.data_version import data_version

    print(json.dumps(data_version(args.repo).to_dict(), indent=2))
    return EXIT_OK


def _cmd_export(args) -> int:
    from dtkd_ops._io import atomic_write_json
    from dtkd_ops.export import export_version
    from dtkd_ops.registry import ModelRegistry

    registry = ModelRegistry(args.tracking_uri or default_tracking_uri())
    out = args.out or Path(os.environ.get("DTKD_HOME", ".dtkd")) / "exports"
    report = export_version(registry, args.model, args.version, manifest=args.manifest, split=args.split, out_dir=out,
                            opset=args.opset, atol=args.atol, min_agreement=args.min_agreement, threads=args.threads,
                            warmup=args.warmup, repeats=args.repeats, batch_size=args.batch_size,
                            max_clips=args.max_clips, int8=args.int8, log_to_mlflow=args.log)
    print(report.summary())
    if args.json_out:
        atomic_write_json(args.json_out, report.to_dict())
    if not report.ok:
        print(f"dtkd export: parity FAILED; files kept in {Path(report.files['onnx']).parent}, nothing logged",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                       "ZENML_ANALYTICS_OPT_IN": "false"}.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("gate", "promote"):
            return _cmd_gate(args, promote=args.command == "promote")
        if args.command == "rollback":
            return _cmd_rollback(args)
        if args.command == "quality":
            return _cmd_quality(args)
        if args.command == "export":
            return _cmd_export(args)
        return _cmd_data_version(args)
    except Exception as err:  # noqa: BLE001 - a CLI reports any failure to run as exit 2
        kind = "" if isinstance(err, (ValueError, FileNotFoundError, RuntimeError)) else f"{type(err).__name__}: "
        print(f"dtkd {args.command}: error: {kind}{err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
