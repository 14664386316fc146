"""Pool replications of the reproduction study: the same protocol run more than once (another
machine, thread count, kernel or commit), each with its own teachers. Each run's cells stay
paired by seed within the run; runs are told apart by offsetting their seeds, so a pair never
mixes two runs. This pools experiments, it does not add seeds to one: say so when quoting it.

    python bench/replications.py docs/results.json old/results.json [--against none] [--row dtkd]

Prints, per row, test and validation mean ± std over all pooled seeds, then ``--row`` minus every
other row, paired, with the study's bootstrap interval; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study.stats import compare, summarize  # noqa: E402

SEED_OFFSET = 1000  # run i's seed s becomes i * SEED_OFFSET + s


def per_seed(study: Mapping[str, Any], metric: str) -> dict[str, dict[int, float]]:
    """{row: {seed: metric}} of one results.json (cells that failed are absent)."""
    out: dict[str, dict[int, float]] = {}
    for row, keys in study["results_of"].items():
        cells = [study["cells"][k] for k in keys if k in study["cells"]]
        out[row] = {int(c["seed"]): float(c[metric]) for c in cells if c.get(metric) is not None}
    return out


def pool(studies: list[Mapping[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """The rows every run has, their seeds offset by run."""
    tables = [per_seed(s, metric) for s in studies]
    rows = set(tables[0]).intersection(*tables[1:]) if tables else set()
    return {row: {i * SEED_OFFSET + s: v for i, t in enumerate(tables) for s, v in t[row].items()}
            for row in sorted(rows)}


def report(studies: list[Mapping[str, Any]], row: str) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(studies), "rows": {}, "vs": {}}
    for metric in ("test_top1", "val_top1"):
        pooled = pool(studies, metric)
        if row not in pooled:
            raise SystemExit(f"row {row!r} is not in every run; rows in all: {sorted(pooled)}")
        for name, values in pooled.items():
            out["rows"].setdefault(name, {})[metric] = summarize(values)
        for name in pooled:
            if name != row:
                out["vs"].setdefault(name, {})[metric] = compare(pooled[row], pooled[name])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json of each run")
    p.add_argument("--row", default="dtkd", help="the row compared with every other")
    args = p.parse_args(argv)
    studies = [json.loads(path.read_text()) for path in args.results]
    rep = report(studies, args.row)
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}"  # noqa: E731
    for name, figs in rep["rows"].items():
        t, v = figs["test_top1"], figs["val_top1"]
        print(f"{name:>12}: n {t['n']}, test {pct(t['mean'])} ± {pct(t['std'])}, val {pct(v['mean'])} ± {pct(v['std'])}")
    for name, figs in rep["vs"].items():
        for metric, c in figs.items():
            ci = "—" if c["ci"] is None else f"[{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]"
            print(f"{args.row} - {name} ({metric}, {len(c['diffs'])} pairs): {100 * c['mean']:+.1f} {ci}"
                  + (" within noise" if c["within_noise"] else ""))
    print(json.dumps(rep, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
