"""Data quality gate: Great Expectations 1.x over the manifest and per-video probe statistics.

Two kinds of check:

* **per-video** (``kind="quarantine"``): decodable, complete (not truncated), frames >= clip
  length, fps range, duration, minimum resolution, duplicate content (sha256 of the bytes). A failing video is *quarantined*
  with a reason (listed, never deleted) and left out of ``clean_manifest``.
* **dataset** (``kind="dataset"``): no video id in two splits, no content shared by two splits
  (leakage), split names, label set equals the config's, videos per class, class balance
  (max/min count per split). Any failure fails the gate.

The gate passes when every dataset check passes and the quarantined fraction is at most
``max_quarantine_fraction``. Three GX validations run on an ephemeral context:
``videos`` (all rows), ``clean_videos`` (rows that passed) and ``class_counts`` (split x label).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import pandas as pd
from pydantic import ValidationError

from dtkd_ops._io import (atomic_write_json, atomic_write_text, format_validation_error, load_yaml_mapping,
                          write_manifest)
from dtkd_ops._gx import GXRunner, failing_rows as _failing_rows
from dtkd.data.config import QualityRules
from dtkd.data.manifest import known_sha256
from dtkd.data.unlabelled import VIDEO_EXTENSIONS
from dtkd_ops.probe import decode_probe, probe_paths, segment_stats

REQUIRED_COLUMNS = ("video_id", "path", "label", "split")
ALLOWED_SPLITS = ("train", "val", "test", "unlabelled")  # unlabelled: the transfer set (no label checks)
_ROW = "_row"

log = logging.getLogger(__name__)


class DataQualityError(RuntimeError):
    """The data quality gate failed; the message is the readable report."""

    def __init__(self, report: "QualityReport"):
        super().__init__(report.summary())
        self.report = report


def rules_for(data_cfg: Any, *, min_frames: int = 1, **overrides: Any) -> QualityRules:
    """The rules of a ``dtkd.data.DataConfig``: its ``quality`` section, with what it leaves null
    filled in: ``min_frames`` = the longest clip a model reads (the caller's), and for the
    synthetic set its generator's class names. A real dataset's label set is the config's
    (``expected_labels`` / ``expected_num_classes``) or, when neither is set, whatever the videos
    carry: never a count implied by the dataset's name. ``overrides`` win over both."""
    rules = data_cfg.quality.model_dump()
    if rules["min_frames"] is None:
        rules["min_frames"] = min_frames
    if data_cfg.dataset == "synthetic" and rules["expected_labels"] is None and rules["expected_num_classes"] is None:
        from dtkd.data.synthetic import class_names

        rules["expected_labels"] = class_names(data_cfg.synthetic.num_classes, data_cfg.synthetic.vocabulary)
    return QualityRules.model_validate({**rules, **overrides})


def load_quality_rules(path: str | Path, *, section: str | None = "quality", **overrides: Any) -> QualityRules:
    """Rules from a YAML file (by default its ``quality:`` section); errors name the bad key."""
    raw = {**load_yaml_mapping(path, section=section), **overrides}
    try:
        return QualityRules.model_validate(raw)
    except ValidationError as err:
        raise ValueError(format_validation_error(err, source=str(path), prefix=section or "")) from None


@dataclass
class CheckResult:
    """Outcome of one expectation, in words."""

    check: str
    kind: Literal["quarantine", "dataset"]
    description: str
    success: bool
    failing: int = 0  # failing rows (videos, ids, split x label cells)
    detail: str = ""
    expectation: str = ""  # the GX expectation type

    def line(self) -> str:
        mark = "PASS" if self.success else "FAIL"
        text = f"[{mark}] {self.check:<22} {self.kind:<10} {self.description}"
        if not self.success and self.detail:
            text += f"\n         -> {self.detail}"
        return text


@dataclass
class QualityReport:
    success: bool
    results: list[CheckResult]
    quarantined: pd.DataFrame  # path, reason (several joined by "; "), video_id, split
    clean_manifest: pd.DataFrame  # manifest rows that passed every per-video check
    stats: pd.DataFrame  # manifest key columns + probe statistics, one row per manifest row
    rules: QualityRules
    n_videos: int
    docs_path: Optional[Path] = None
    timings: dict[str, float] = field(default_factory=dict)
    # Videos under the data root that no split lists, and folders none of whose videos is listed
    # (a class folder the split files forget): reported, not failed (run_quality_gate's data_root).
    unlisted_videos: list[str] = field(default_factory=list)
    unlisted_folders: list[str] = field(default_factory=list)

    @property
    def quarantine_fraction(self) -> float:
        return len(self.quarantined) / self.n_videos if self.n_videos else 0.0

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [r for r in self.results if r.kind == "dataset" and not r.success]

    def summary(self, max_listed: int = 20) -> str:
        status = "PASSED" if self.success else "FAILED"
        frac, limit = self.quarantine_fraction, self.rules.max_quarantine_fraction
        lines = [
            f"Data quality gate: {status}",
            f"  videos {self.n_videos}, quarantined {len(self.quarantined)} ({frac:.1%}; limit "
            f"{limit:.1%}{'' if frac <= limit else ' EXCEEDED'}), clean {len(self.clean_manifest)}",
        ]
        if self.timings:
            lines.append("  time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        lines.append("Checks:")
        lines += ["  " + r.line() for r in self.results]
        if len(self.quarantined):
            lines.append("Quarantined videos (kept on disk, left out of the clean manifest):")
            for row in self.quarantined.head(max_listed).itertuples(index=False):
                lines.append(f"  {row.path}: {row.reason}")
            if len(self.quarantined) > max_listed:
                lines.append(f"  ... and {len(self.quarantined) - max_listed} more")
        for what, items in (("video(s) on disk that no split lists", self.unlisted_videos),
                            ("folder(s) with videos none of which is listed", self.unlisted_folders)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
                lines.append(f"Not in the dataset: {len(items)} {what}: {shown}")
        if self.docs_path:
            lines.append(f"Data Docs: {self.docs_path}")
        return "\n".join(lines)

    def index_html(self) -> str:
        """The Data Docs index page (empty when no ``docs_dir`` was given)."""
        return self.docs_path.read_text() if self.docs_path and self.docs_path.is_file() else ""

    def raise_for_failure(self) -> "QualityReport":
        if not self.success:
            raise DataQualityError(self)
        return self

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "n_videos": self.n_videos,
            "n_quarantined": len(self.quarantined),
            "quarantine_fraction": self.quarantine_fraction,
            "n_clean": len(self.clean_manifest),
            "checks": {r.check: {"success": r.success, "kind": r.kind, "failing": r.failing, "detail": r.detail}
                       for r in self.results},
            "docs_path": str(self.docs_path) if self.docs_path else None,
            "timings_s": self.timings,
            "unlisted_videos": self.unlisted_videos,
            "unlisted_folders": self.unlisted_folders,
        }

    def write(self, out_dir: str | Path, *, relative_to: str | Path | None = None,
              reports_dir: str | Path | None = None) -> Path:
        """Write quarantine.csv and clean_manifest.parquet into ``out_dir`` and report.json and
        summary.txt into ``reports_dir`` (default: ``out_dir``), each atomically. The reports hold
        timings, so a DVC stage keeps them apart from its outputs. ``relative_to``: store the
        clean manifest's paths relative to this folder (what a DVC output wants)."""
        out = Path(out_dir)
        reports = Path(reports_dir) if reports_dir is not None else out
        atomic_write_json(reports / "report.json", self.to_dict())
        atomic_write_text(reports / "summary.txt", self.summary(max_listed=10_000) + "\n")
        atomic_write_text(out / "quarantine.csv", self.quarantined.to_csv(index=False))
        if relative_to is not None:
            write_manifest(self.clean_manifest, out / "clean_manifest.parquet", base=relative_to)
        else:
            tmp = out / ".clean_manifest.parquet.tmp"
            self.clean_manifest.to_parquet(tmp, index=False)
            tmp.replace(out / "clean_manifest.parquet")
        return out


# --------------------------------------------------------------------------- expectations


@dataclass
class _Check:
    name: str
    kind: Literal["quarantine", "dataset"]
    description: str
    expectation: Any  # a GX expectation instance
    reason: Optional[Callable[[pd.Series], str]] = None  # quarantine reason for one failing row
    fix: str = ""  # which config key changes the expectation, said when the check fails


def _video_checks(rules: QualityRules) -> list[_Check]:
    import great_expectations.expectations as gxe

    r = rules
    min_frames = r.min_frames or 1  # null: no model named a clip length (the CLI without --min-frames)
    checks = [
        _Check("decodable", "quarantine", "every frame of the video decodes",
               gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
               lambda row: f"undecodable ({row['error']})"),
        _Check("complete", "quarantine", f"decoded frames >= declared - max({r.max_missing_frames}, "
                                         f"{r.max_missing_fraction:g} x declared)",
               gxe.ExpectColumnValuesToBeBetween(column="missing_excess", max_value=0),
               lambda row: f"truncated or damaged: decoded {row['frames']:.0f} of {row['declared_frames']:.0f} "
                           "declared frames"),
        _Check("decode_errors", "quarantine", f"packets that fail to decode <= {r.max_decode_errors}",
               gxe.ExpectColumnValuesToBeBetween(column="decode_errors", max_value=r.max_decode_errors),
               lambda row: f"damaged: {row['decode_errors']:.0f} packet(s) failed to decode"),
        _Check("monotonic_timestamps", "quarantine", "frame timestamps strictly increase",
               gxe.ExpectColumnValuesToBeInSet(column="timestamps_monotonic", value_set=[True]),
               lambda row: "frame timestamps go backwards or repeat (broken or spliced file)"),
        _Check("min_frames", "quarantine", f"decoded frames >= {min_frames} (clip length)",
               gxe.ExpectColumnValuesToBeBetween(column="frames", min_value=min_frames),
               lambda row: f"{row['frames']:.0f} frames < clip length {min_frames}"),
        _Check("fps_range", "quarantine", f"fps in [{r.min_fps:g}, {r.max_fps:g}]",
               gxe.ExpectColumnValuesToBeBetween(column="fps", min_value=r.min_fps, max_value=r.max_fps),
               lambda row: f"fps {row['fps']:g} outside [{r.min_fps:g}, {r.max_fps:g}]"),
        _Check("min_duration", "quarantine", f"duration >= {r.min_duration_s:g} s",
               gxe.ExpectColumnValuesToBeBetween(column="duration_s", min_value=r.min_duration_s),
               lambda row: f"duration {row['duration_s']:.2f} s < {r.min_duration_s:g} s"),
        _Check("min_width", "quarantine", f"width >= {r.min_width}",
               gxe.ExpectColumnValuesToBeBetween(column="width", min_value=r.min_width),
               lambda row: f"width {row['width']:.0f} < {r.min_width}"),
        _Check("min_height", "quarantine", f"height >= {r.min_height}",
               gxe.ExpectColumnValuesToBeBetween(column="height", min_value=r.min_height),
               lambda row: f"height {row['height']:.0f} < {r.min_height}"),
    ]
    if r.check_duplicates:
        checks.append(_Check("duplicate_content", "quarantine", "no two files with the same sha256",
                             gxe.ExpectColumnValuesToBeUnique(column="sha256"), None))  # reason: see below
    checks += [
        _Check("split_names", "dataset", f"split in {list(ALLOWED_SPLITS)}",
               gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(ALLOWED_SPLITS))),
        _Check("id_leakage", "dataset", "no video_id in two splits",
               gxe.ExpectColumnValuesToBeBetween(column="id_n_splits", max_value=1)),
    ]
    if r.check_duplicates:
        checks.append(_Check("content_leakage", "dataset", "no file content in two splits",
                             gxe.ExpectColumnValuesToBeBetween(column="content_n_splits", max_value=1)))
    return checks


def _clean_checks(rules: QualityRules) -> list[_Check]:
    import great_expectations.expectations as gxe

    checks = [
        _Check("nonempty", "dataset", "at least one clean video",
               gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        _Check("required_splits", "dataset", f"splits {rules.required_splits} present after quarantine",
               gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(rules.required_splits))),
    ]
    fix = ("to change it set data.quality.expected_labels or expected_num_classes in the run config "
           "(both null: the labels the videos carry)")
    if rules.expected_labels is not None:
        checks.append(_Check("label_set", "dataset", f"label set equals the config's {len(rules.expected_labels)}: "
                             f"{_short(rules.expected_labels)}",
                             gxe.ExpectColumnDistinctValuesToEqualSet(column="label",
                                                                       value_set=list(rules.expected_labels)),
                             fix=fix))
    elif rules.expected_num_classes is not None:
        n = rules.expected_num_classes
        checks.append(_Check("label_set", "dataset", f"exactly {n} labels",
                             gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=n, max_value=n),
                             fix=fix))
    return checks


def _short(items: list[str], most: int = 8) -> str:
    shown = ", ".join(map(str, items[:most]))
    return f"[{shown}{', ...' if len(items) > most else ''}]"


def _class_checks(rules: QualityRules) -> list[_Check]:
    import great_expectations.expectations as gxe

    return [
        _Check("videos_per_class", "dataset", f">= {rules.min_videos_per_class} clean videos per class and split",
               gxe.ExpectColumnValuesToBeBetween(column="count", min_value=rules.min_videos_per_class)),
        _Check("class_balance", "dataset", f"max/min videos per class <= {rules.max_class_imbalance:g} in each split",
               gxe.ExpectColumnValuesToBeBetween(column="imbalance", max_value=rules.max_class_imbalance)),
    ]


# --------------------------------------------------------------------------- tables


def _check_manifest(manifest: pd.DataFrame) -> None:
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"manifest must be a pandas DataFrame, got {type(manifest).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest is missing column(s) {missing}; it has {list(manifest.columns)}")


def _video_table(manifest: pd.DataFrame, stats: pd.DataFrame, rules: QualityRules) -> pd.DataFrame:
    t = manifest[list(REQUIRED_COLUMNS)].reset_index(drop=True).copy()
    t["video_id"] = t["video_id"].astype(str)
    t["path"] = t["path"].astype(str)
    t = pd.concat([t, stats.reset_index(drop=True)], axis=1)
    t.insert(0, _ROW, range(len(t)))
    for col in ("frames", "declared_frames", "width", "height", "size_bytes"):  # floats; NaN = unknown
        t[col] = t[col].astype(float)
    t["missing_frames"] = t["declared_frames"] - t["frames"]  # NaN when either is unknown
    allowed = (t["declared_frames"] * rules.max_missing_fraction).clip(lower=rules.max_missing_frames)
    t["missing_excess"] = t["missing_frames"] - allowed  # > 0: incomplete; NaN: unknown
    t["decode_errors"] = pd.to_numeric(t["decode_errors"], errors="coerce").astype(float)
    t["id_n_splits"] = t.groupby("video_id")["split"].transform("nunique").astype(int)
    has_hash = t["sha256"].notna()
    t["content_n_splits"] = 1
    if has_hash.any():
        t.loc[has_hash, "content_n_splits"] = (
            t[has_hash].groupby("sha256")["split"].transform("nunique").astype(int)
        )
    return t


def _class_table(clean: pd.DataFrame, labels: list[str], splits: list[str]) -> pd.DataFrame:
    counts = clean.groupby(["split", "label"]).size()
    rows = []
    for split in splits:
        per = {lab: int(counts.get((split, lab), 0)) for lab in labels}
        top = max(per.values(), default=0)
        for lab, n in per.items():
            rows.append({"split": split, "label": lab, "count": n, "imbalance": top / max(n, 1)})
    return pd.DataFrame(rows, columns=["split", "label", "count", "imbalance"])


# --------------------------------------------------------------------------- GX results in words


def _describe(check: _Check, result, table: pd.DataFrame, max_items: int = 8) -> tuple[int, str]:
    """(failing count, readable detail) of one expectation result."""
    res = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        return 1, f"expectation raised: {result.exception_info.get('exception_message')}"
    name = check.name
    if name in ("id_leakage", "content_leakage"):
        key = "video_id" if name == "id_leakage" else "sha256"
        rows = table[table[_ROW].isin(_failing_rows(result, _ROW))]
        groups = rows.groupby(key)["split"].apply(lambda s: sorted(set(s)))
        items = []
        if groups.empty:
            return 0, ""
        for k, splits in list(groups.items())[:max_items]:
            if key == "sha256":
                paths = sorted(rows.loc[rows["sha256"] == k, "path"])
                items.append(f"{' == '.join(Path(p).name for p in paths)} in {splits}")
            else:
                items.append(f"{k} in {splits}")
        more = f" (+{len(groups) - max_items} more)" if len(groups) > max_items else ""
        return len(groups), "; ".join(items) + more
    if name in ("videos_per_class", "class_balance"):
        cells = table[table["_cell"].isin(_failing_rows(result, "_cell"))]
        if cells.empty:
            return 0, ""
        items = [f"{r.split}/{r.label}: {r.count}" for r in cells.head(max_items).itertuples()]
        return len(cells), "counts " + ", ".join(items)
    if name == "split_names":
        bad = sorted({str(v) for v in res.get("partial_unexpected_list") or []})
        return int(res.get("unexpected_count") or 0), (f"unknown split names {bad}" if bad else "")
    if "missing_count" in res or "partial_missing_list" in res:  # set expectations (GX 1.2x)
        missing = sorted(map(str, res.get("partial_missing_list") or []))
        unexpected = sorted(map(str, res.get("partial_unexpected_list") or []))
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {unexpected}"] if unexpected else [])
        return len(missing) + len(unexpected), ", ".join(parts)
    if res.get("observed_value") is not None:
        observed = res["observed_value"]
        if isinstance(observed, (list, set, tuple)):
            observed = sorted(map(str, observed))
        return 0 if result.success else 1, f"observed {observed}"
    return int(res.get("unexpected_count") or 0), ""


def run_quality_gate(
    manifest: pd.DataFrame,
    rules: QualityRules,
    *,
    docs_dir: str | Path | None = None,
    workers: int = 1,
    probe: Callable[[str], dict] = decode_probe,
    data_root: str | Path | None = None,
) -> QualityReport:
    """Probe every video of ``manifest``, validate with Great Expectations, quarantine bad videos.

    ``docs_dir``: build a Data Docs HTML site there (``report.docs_path`` is its index.html).
    ``probe``: per-path probe returning decodable/frames/fps/width/height/duration_s/error
    (default: decode every frame with PyAV). ``data_root``: also list the videos under it that no
    manifest row names, and the folders none of whose videos it names (reported, not failed).
    """
    _check_manifest(manifest)
    manifest = manifest.reset_index(drop=True)
    t0 = time.perf_counter()
    if "start_frame" in manifest.columns:  # segments of longer sources (EPIC-KITCHENS): probed per segment
        stats = segment_stats(manifest)
    else:
        stats = probe_paths(manifest["path"].astype(str), workers=workers, probe=probe,
                            hash_files=rules.check_duplicates,
                            sha256=known_sha256(manifest))
    t_probe = time.perf_counter() - t0

    t1 = time.perf_counter()
    import great_expectations  # noqa: F401  (first import ~2-3 s; timed apart from validation)

    t_import = time.perf_counter() - t1
    t1 = time.perf_counter()
    table = _video_table(manifest, stats, rules)
    gx_ctx = GXRunner(Path(docs_dir) if docs_dir is not None else None)
    results: list[CheckResult] = []
    reasons: dict[int, list[str]] = {}

    # 1. every video: per-video checks (quarantine) + leakage (dataset)
    for check, res in _validate(gx_ctx, "videos", table, _video_checks(rules), _ROW):
        if check.kind != "quarantine":
            results.append(_result(check, res, *_describe(check, res, table)))
            continue
        bad_rows = _failing_rows(res, _ROW)
        if check.name == "duplicate_content":
            bad_rows = _duplicates_after_first(table, bad_rows, reasons)
        else:
            for i in bad_rows:
                reasons.setdefault(i, []).append(check.reason(table.iloc[i]))
        results.append(_result(check, res, len(bad_rows), _example_paths(table, bad_rows)))

    quarantined_rows = sorted(reasons)
    quarantined = pd.DataFrame(
        {"path": [table.at[i, "path"] for i in quarantined_rows],
         "reason": ["; ".join(reasons[i]) for i in quarantined_rows],
         "video_id": [table.at[i, "video_id"] for i in quarantined_rows],
         "split": [table.at[i, "split"] for i in quarantined_rows]},
        columns=["path", "reason", "video_id", "split"],
    )
    clean_mask = ~table[_ROW].isin(quarantined_rows)
    clean_manifest = manifest[clean_mask.to_numpy()].reset_index(drop=True)

    # 2. the clean labelled videos: splits, label set (the transfer set's videos have no label:
    # they pass the per-video and leakage checks above, and only those)
    clean_table = table.loc[clean_mask & (table["split"] != "unlabelled"),
                            [_ROW, "video_id", "path", "label", "split"]].reset_index(drop=True)
    results += [_result(check, res, *_describe(check, res, clean_table))
                for check, res in _validate(gx_ctx, "clean_videos", clean_table, _clean_checks(rules), _ROW)]

    # 3. split x label counts of the clean videos: videos per class, balance
    labels = (list(rules.expected_labels) if rules.expected_labels is not None
              else sorted(table.loc[table["split"] != "unlabelled", "label"].astype(str).unique()))
    splits = [s for s in ALLOWED_SPLITS if s in set(clean_table["split"]) | set(rules.required_splits)]
    cls = _class_table(clean_table, labels, splits)
    cls.insert(0, "_cell", range(len(cls)))
    results += [_result(check, res, *_describe(check, res, cls))
                for check, res in _validate(gx_ctx, "class_counts", cls, _class_checks(rules), "_cell")]

    t_gx = time.perf_counter() - t1
    t2 = time.perf_counter()
    docs_path = gx_ctx.build_docs()
    t_docs = time.perf_counter() - t2

    fraction_ok = (len(quarantined) / len(table) if len(table) else 0.0) <= rules.max_quarantine_fraction
    success = fraction_ok and all(r.success for r in results if r.kind == "dataset")
    stats_out = table.drop(columns=[_ROW])
    unlisted, folders = unlisted_videos(data_root, manifest) if data_root is not None else ([], [])
    return QualityReport(
        success=success, results=results, quarantined=quarantined, clean_manifest=clean_manifest,
        stats=stats_out, rules=rules, n_videos=len(table), docs_path=docs_path,
        timings={"probe": t_probe, "gx_validate": t_gx, "data_docs": t_docs, "gx_import": t_import},
        unlisted_videos=unlisted, unlisted_folders=folders,
    )


def unlisted_videos(root: str | Path, manifest: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(videos under ``root`` that no manifest row names, folders holding videos none of which a
    row names), sorted: what a split file forgot, or an extra class folder."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    listed = {os.path.realpath(p) for p in manifest["path"].astype(str)}
    listed_dirs = {os.path.dirname(p) for p in listed}
    on_disk = [p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    missing = sorted(str(p) for p in on_disk if os.path.realpath(p) not in listed)
    folders = sorted({str(p.parent) for p in on_disk if os.path.realpath(p.parent) not in listed_dirs})
    return missing, folders


def _validate(gx_ctx, suite: str, table: pd.DataFrame, checks: list, key: str) -> list[tuple]:
    """(check, its GX result) for every check of one suite run over ``table`` (rows keyed by ``key``)."""
    results = gx_ctx.validate(suite, table, checks, [key])
    return [(check, results[check.name]) for check in checks]


def _result(check, res, failing: int, detail: str) -> CheckResult:
    if not res.success and check.fix:
        detail = f"{detail}; {check.fix}" if detail else check.fix
    return CheckResult(check.name, check.kind, check.description, res.success, failing, detail, res.expectation_config.type)


def _duplicates_after_first(table: pd.DataFrame, rows: list[int], reasons: dict[int, list[str]]) -> list[int]:
    """GX flags every copy of a duplicated file; keep the first copy (manifest order) and
    quarantine the others with a reason naming the kept file. Returns the quarantined rows."""
    flagged = table[table[_ROW].isin(rows)].sort_values(_ROW)
    out = []
    for _, group in flagged.groupby("sha256", sort=False):
        keep = group.iloc[0]
        for _, dup in group.iloc[1:].iterrows():
            why = ("listed more than once in the manifest" if dup["path"] == keep["path"]
                   else f"duplicate content of {keep['path']}")
            reasons.setdefault(int(dup[_ROW]), []).append(why)
            out.append(int(dup[_ROW]))
    return sorted(out)


def _example_paths(table: pd.DataFrame, rows: list[int], max_items: int = 3) -> str:
    if not rows:
        return ""
    names = [Path(table.at[i, "path"]).name for i in rows[:max_items]]
    more = f" (+{len(rows) - max_items} more)" if len(rows) > max_items else ""
    return f"{len(rows)} video(s): {', '.join(names)}{more}"
