"""Great Expectations 1.x plumbing for the quality gate: an ephemeral context, one pandas data
source, and per table an asset -> whole-dataframe batch definition -> suite -> validation
definition, run with ``batch_parameters={"dataframe": df}``; an optional filesystem Data Docs site.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

# GX logs ~200 INFO lines while importing ("Skipping registering function ..."), visible whenever
# the root logger is at INFO (ZenML sets it so). Quiet it before the lazy import below.
logging.getLogger("great_expectations").setLevel(logging.WARNING)


class GXRunner:
    """An ephemeral GX context with one pandas datasource; one asset + suite + validation per table."""

    def __init__(self, docs_dir: Optional[Path]):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.ctx.data_sources.add_pandas("dtkd_manifest")
        self.docs_dir = docs_dir
        if docs_dir is not None:
            self.ctx.add_data_docs_site(
                "dtkd_quality",
                {
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                      "base_directory": str(Path(docs_dir).resolve())},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )

    def validate(self, name: str, df: pd.DataFrame, checks: Sequence[Any], index_cols: list[str]):
        batch_def = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_all")
        suite = self.ctx.suites.add(self.gx.ExpectationSuite(name=f"dtkd_{name}"))
        for c in checks:
            c.expectation.meta = {"dtkd_check": c.name, "dtkd_kind": c.kind, "description": c.description}
            suite.add_expectation(c.expectation)
        vd = self.ctx.validation_definitions.add(
            self.gx.ValidationDefinition(name=f"dtkd_{name}", data=batch_def, suite=suite)
        )
        fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": index_cols}
        result = vd.run(batch_parameters={"dataframe": df}, result_format=fmt)
        return {r.expectation_config.meta["dtkd_check"]: r for r in result.results}

    def build_docs(self) -> Optional[Path]:
        if self.docs_dir is None:
            return None
        self.ctx.build_data_docs(site_names=["dtkd_quality"])
        return Path(self.docs_dir).resolve() / "index.html"


def failing_rows(result, key: str) -> list:
    """Values of ``key`` (an ``unexpected_index_column_names`` column) of the rows an expectation
    flagged (COMPLETE result format)."""
    return [item[key] for item in (result.result.get("unexpected_index_list") or [])]
