"""How many seeds a paired comparison of the study needs, from its ``results.json``:

    python -m bench.study.power docs/results.json --half-width 2

For every table row with a paired comparison (with CE, or with the best baseline), the spread of
its per-seed differences (sample std, points), the 95% half-width the study's seeds give, and the
seeds a target half-width needs. Normal approximation, half-width = z * sd / sqrt(n): what the
study's percentile bootstrap of the mean approaches (at 5 seeds it is narrower than a t-interval,
t_4 = 2.78 against z = 1.96, so the seeds needed are a lower bound). The spread itself is
estimated from the same few seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from statistics import NormalDist, median
from typing import Any, Mapping, Optional, Sequence


def z_of(level: float) -> float:
    """The two-sided normal quantile of ``level`` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def half_width(sd: float, n: int, level: float = 0.95) -> float:
    """Half-width of the normal interval of a mean of ``n`` values with spread ``sd``."""
    return z_of(level) * sd / math.sqrt(n)


def seeds_needed(sd: float, target: float, level: float = 0.95) -> int:
    """The fewest seeds (at least 2) whose interval half-width is at most ``target``."""
    if target <= 0:
        raise ValueError(f"target half-width must be > 0, got {target}")
    return max(2, math.ceil((z_of(level) * sd / target) ** 2))


def power_rows(results: Mapping[str, Any], *, against: str = "vs_ce", target: float = 2.0,
               level: float = 0.95) -> list[dict[str, Any]]:
    """One line per distinct row that has the ``against`` comparison (``vs_ce`` or ``vs_best``),
    in points: seeds, mean and sd of the paired differences, the study's bootstrap interval, the
    normal half-width at the study's seeds, and the seeds ``target`` needs."""
    lines, seen = [], set()
    for table_lines in results["analysis"]["tables"].values():
        for line in table_lines:
            cmp: Optional[Mapping[str, Any]] = line.get(against)
            if line["row"] in seen or not cmp or cmp.get("std") is None:
                continue
            seen.add(line["row"])
            n, sd = len(cmp["diffs"]), 100 * cmp["std"]
            lines.append({"row": line["row"], "n": n, "mean": 100 * cmp["mean"], "sd": sd,
                          "ci": [100 * v for v in cmp["ci"]] if cmp.get("ci") else None,
                          "half_width": half_width(sd, n, level), "seeds_for_target": seeds_needed(sd, target, level)})
    return lines


def markdown(lines: Sequence[Mapping[str, Any]], *, against: str, target: float) -> str:
    ref = "CE" if against == "vs_ce" else "the best baseline"
    out = [f"| Row | Seeds | Δ vs {ref} (points) | sd of the paired Δ | bootstrap 95% | ± at these seeds | seeds for ±{target:g} |",
           "|---|---:|---:|---:|---|---:|---:|"]
    for ln in lines:
        ci = f"[{ln['ci'][0]:+.1f}, {ln['ci'][1]:+.1f}]" if ln["ci"] else "—"
        out.append(f"| {ln['row']} | {ln['n']} | {ln['mean']:+.1f} | {ln['sd']:.1f} | {ci} | "
                   f"{ln['half_width']:.1f} | {ln['seeds_for_target']} |")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a results.json written by bench/reproduce.py")
    p.add_argument("--against", choices=["vs_ce", "vs_best"], default="vs_ce")
    p.add_argument("--half-width", type=float, default=2.0, help="target 95%% half-width, points")
    args = p.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
        lines = power_rows(results, against=args.against, target=args.half_width)
    except (OSError, ValueError, KeyError) as err:
        print(f"{args.results}: not a study results.json ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    print(markdown(lines, against=args.against, target=args.half_width))
    if lines:
        typical = median(ln["sd"] for ln in lines)
        print(f"\nmedian sd of the paired differences: {typical:.1f} points; "
              f"seeds for ±{args.half_width:g}: {seeds_needed(typical, args.half_width)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
