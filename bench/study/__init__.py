"""The reproduction study behind ``bench/reproduce.py`` (issue 11): teachers prepared once,
cells (row x seed) distilled in worker processes and cached, paired statistics, report.

    keys      content keys (stage JSON without locations, weight hashes, torch, threads)
    pool      worker processes with a fixed thread count; per-epoch progress lines
    teachers  pretrain -> fine-tune each teacher once, cached by what determines it
    cells     one distilled student per (row, seed), keyed and cached as JSON
    tables    which rows each table of the paper has
    stats     mean, std and paired bootstrap intervals over seeds
    analysis  per-row figures, comparisons with CE and the best baseline, the headline
    cost      Table 8: params, FLOPs, CPU latency
    plots     the PNG figures;  report: results.md and results.json
"""
