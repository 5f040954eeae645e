"""Error rates of the nightly change detection: the suite's median/MAD rule
(`analysis.regressions` with ReportConfig's defaults) against Apache Otava's E-Divisive with
t-tests (`suite.report.changepoints`), on synthetic nightly histories with known changes.

Each series is 30 nights of tokens/s per device: a level of 1000 times (1 + noise x N(0, 1)),
nights independent (noise = the standard deviation of one night around its level: 1, 2 or
5%). Noise-only series have no change; drop series lose 3, 5 or 10% for good from night 20
(0-based: 20 nights before, 10 after). Detection is sequential, as nightly: on night t a method
sees nights 0..t only, and every night from the second on is judged.

- median/MAD: an alert on night t is a `regression` verdict for night t.
- Otava: on night t, Otava runs on nights 0..t; an alert is any change point with a drop
  (mean after < mean before) in that analysis. A drop counts as found on the first night
  t >= 20 whose analysis has a drop change point at night 18 or later (Otava may place it a
  night or two early).

Figures per cell: `alerted` = share of noise-only series with any alert over their 30 nights
(also `either way`, counting rises: Otava change points up, `improvement` verdicts);
`false before drop` = share of drop series alerted before night 20; `found` = share of drop
series found by night 29; `nights to find` = nights from the drop to its detection (0 = found
on night 20, the first slow night; median over the found series); `within 3` = share of all
drop series found at most 3 nights after the drop (nights 20-23), `within 2` likewise (nights
20-22: by the third slow night). Targets: noise-only `alerted` <= 5% (at every noise level);
5% drop at 2% noise `within 3` >= 90%.

`python bench/changepoint_error_rates.py [--series N] [--seed S] [--small]` prints the Markdown
table (default: 200 series per cell, seed 2, the reported run). `--tune` runs the grid of
Otava's parameters on the tuning seed (1), never on the reported one, and prints each
setting's figures on the targets (the reported choice: `--tune --series 100`, bench/RESULTS.md)."""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from suite.config import ReportConfig  # noqa: E402
from suite.report import changepoints  # noqa: E402

NIGHTS, DROP_NIGHT, LEVEL = 30, 20, 1000.0
NOISES = (0.01, 0.02, 0.05)
DROPS = (0.03, 0.05, 0.10)
EARLY = 2  # Otava may place a change point this many nights before the true one
REPORT_SEED, TUNE_SEED = 2, 1
# Otava's grid, in two passes on the tuning seed: the first wide, the second around its best
# (a window of 60 takes the whole history at once; 30 runs a second window on nights 15-29)
TUNE_GRIDS = ({"window": (15, 30), "max_pvalue": (0.0002, 0.0005, 0.001, 0.002, 0.005),
               "min_magnitude": (0.0, 0.02, 0.03, 0.04, 0.05)},
              {"window": (30, 60), "max_pvalue": (0.0005, 0.0007, 0.001), "min_magnitude": (0.03, 0.04)})


def cells() -> List[Tuple[float, float]]:
    """(noise, drop) pairs; drop 0 = noise-only."""
    return [(noise, 0.0) for noise in NOISES] + [(noise, drop) for noise in NOISES for drop in DROPS]


def make_series(noise: float, drop: float, count: int, seed: int) -> np.ndarray:
    """`count` series of NIGHTS nights (rows), from their own stream per (seed, cell)."""
    rng = np.random.default_rng([seed, int(round(noise * 1000)), int(round(drop * 1000))])
    values = LEVEL * (1 + noise * rng.standard_normal((count, NIGHTS)))
    values[:, DROP_NIGHT:] *= 1 - drop
    return values


def median_mad_alerts(all_series: Sequence[np.ndarray], rule: ReportConfig) -> List[Dict[str, List[int]]]:
    """Per series, the nights of `regression` verdicts (drops) and of any verdict but
    `unchanged` (either), all series judged together, one call of the rule per night."""
    judged = changepoints.median_mad_verdicts(
        [list(s) for s in all_series], window=rule.window, min_drop=rule.min_drop,
        noise_sigmas=rule.noise_sigmas, max_allowed_drop=rule.max_allowed_drop)
    out = [{"drop": [], "either": [], "found": []} for _ in all_series]
    for r in judged[judged.verdict != "unchanged"].itertuples():
        out[r.series]["either"].append(r.night)
        if r.verdict == "regression":
            out[r.series]["drop"].append(r.night)
            if r.night >= DROP_NIGHT:
                out[r.series]["found"].append(r.night)
    return out


def otava_alerts(values: np.ndarray, params: dict, drop_series: bool) -> Dict[str, List[int]]:
    """The nights on which Otava's analysis of nights 0..t has a drop change point (drop), any
    change point (either), and a drop change point at DROP_NIGHT - EARLY or later on a night
    t >= DROP_NIGHT (found). Stops as soon as what the figures need is known."""
    out = {"drop": [], "either": [], "found": []}
    for t in range(1, NIGHTS):
        found = changepoints.otava_changes(values[:t + 1], **params)
        drops = [c for c in found if c.change < 0]
        if found:
            out["either"].append(t)
        if drops:
            out["drop"].append(t)
        if t >= DROP_NIGHT and any(c.index >= DROP_NIGHT - EARLY for c in drops):
            out["found"].append(t)
            break
        if not drop_series and out["drop"] and out["either"]:
            break  # a noise-only series: alerted, both ways known
    return out


def figures(noise: float, drop: float, alerts: List[Dict[str, List[int]]]) -> dict:
    n = len(alerts)
    row = {"noise": noise, "drop": drop, "series": n}
    if drop == 0:
        row["alerted"] = sum(bool(a["drop"]) for a in alerts) / n
        row["either way"] = sum(bool(a["either"]) for a in alerts) / n
        return row
    row["false before drop"] = sum(any(t < DROP_NIGHT for t in a["drop"]) for a in alerts) / n
    delays = [a["found"][0] - DROP_NIGHT for a in alerts if a["found"]]
    row["found"] = len(delays) / n
    row["nights to find"] = float(np.median(delays)) if delays else None
    row["within 2"] = sum(d <= 2 for d in delays) / n
    row["within 3"] = sum(d <= 3 for d in delays) / n
    return row


def run(count: int, seed: int, otava_params: dict, rule: ReportConfig, methods=("median/MAD", "Otava"),
        only=None) -> pd.DataFrame:
    """The figures of each method and cell (`only`: a subset of the cells)."""
    grid = only or cells()
    series = {cell: make_series(*cell, count, seed) for cell in grid}
    rows = []
    if "median/MAD" in methods:
        flat = [s for cell in grid for s in series[cell]]
        alerts = median_mad_alerts(flat, rule)
        for i, cell in enumerate(grid):
            rows.append({"method": "median/MAD", **figures(*cell, alerts[i * count:(i + 1) * count])})
    if "Otava" in methods:
        for cell in grid:
            alerts = [otava_alerts(s, otava_params, cell[1] > 0) for s in series[cell]]
            rows.append({"method": "Otava", **figures(*cell, alerts)})
    return pd.DataFrame(rows)


def verdict(table: pd.DataFrame) -> pd.Series:
    """Per method: does it meet both targets?"""
    def meets(group: pd.DataFrame) -> bool:
        quiet = group[group["drop"] == 0]["alerted"].max() <= 0.05
        cell = group[(group["noise"] == 0.02) & (group["drop"] == 0.05)]["within 3"]
        return bool(quiet and len(cell) and cell.iloc[0] >= 0.90)
    return table.groupby("method", sort=False)[["noise", "drop", "alerted", "within 3"]].apply(meets)


def markdown(table: pd.DataFrame) -> str:
    def pct(v):
        return "" if v is None or pd.isna(v) else f"{v:.1%}"
    lines = ["| method | noise | drop | series | noise-only alerted (drops) | either way | "
             "false before drop | found | nights to find (median) | within 2 nights | within 3 nights |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.to_dict("records"):
        nights = r.get("nights to find")
        lines.append(
            f"| {r['method']} | {r['noise']:.0%} | {'none' if r['drop'] == 0 else format(r['drop'], '.0%')} | "
            f"{r['series']} | {pct(r.get('alerted'))} | {pct(r.get('either way'))} | "
            f"{pct(r.get('false before drop'))} | {pct(r.get('found'))} | "
            f"{'' if nights is None or pd.isna(nights) else format(nights, 'g')} | {pct(r.get('within 2'))} | "
            f"{pct(r.get('within 3'))} |")
    return "\n".join(lines)


def tune(count: int, rule: ReportConfig) -> pd.DataFrame:
    """Otava's grid on the tuning seed, on the cells the targets name (noise-only at every
    level, 5% at 2%) and the 3% drop at 2% (the trade-off)."""
    target_cells = [(noise, 0.0) for noise in NOISES] + [(0.02, 0.05), (0.02, 0.03)]
    rows = []
    settings = [s for grid in TUNE_GRIDS for s in itertools.product(*grid.values())]
    for window, pvalue, magnitude in dict.fromkeys(settings):
        params = {"window": window, "max_pvalue": pvalue, "min_magnitude": magnitude}
        t = run(count, TUNE_SEED, params, rule, methods=("Otava",), only=target_cells).set_index(["noise", "drop"])
        row = {**params, **{f"alerted {n:.0%}": t.loc[(n, 0.0), "alerted"] for n in NOISES},
               "5%@2% within 3": t.loc[(0.02, 0.05), "within 3"], "5%@2% within 2": t.loc[(0.02, 0.05), "within 2"],
               "5%@2% found": t.loc[(0.02, 0.05), "found"],
               "3%@2% within 3": t.loc[(0.02, 0.03), "within 3"]}
        row = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in row.items()}
        row["meets"] = max(row[f"alerted {n:.0%}"] for n in NOISES) <= 0.05 and row["5%@2% within 3"] >= 0.90
        rows.append(row)
        print(", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200, help="series per cell")
    parser.add_argument("--seed", type=int, default=REPORT_SEED)
    parser.add_argument("--small", action="store_true", help="10 series per cell: a smoke run, figures mean little")
    parser.add_argument("--tune", action="store_true", help=f"Otava's parameter grid on seed {TUNE_SEED}")
    parser.add_argument("--window", type=int, default=changepoints.OTAVA_WINDOW)
    parser.add_argument("--max-pvalue", type=float, default=changepoints.OTAVA_MAX_PVALUE)
    parser.add_argument("--min-magnitude", type=float, default=changepoints.OTAVA_MIN_MAGNITUDE)
    args = parser.parse_args()
    rule = ReportConfig()
    count = 10 if args.small else args.series
    start = time.perf_counter()
    if args.tune:
        grid = tune(count, rule)
        print(grid.to_markdown(index=False, floatfmt=".3f"))
        print(f"\n{time.perf_counter() - start:.0f} s")
        return
    if args.seed == TUNE_SEED:
        print(f"note: seed {TUNE_SEED} is the tuning seed; the reported figures use {REPORT_SEED}")
    otava = {"window": args.window, "max_pvalue": args.max_pvalue, "min_magnitude": args.min_magnitude}
    table = run(count, args.seed, otava, rule)
    print(f"{count} series per cell, seed {args.seed}, {NIGHTS} nights (drop from night {DROP_NIGHT}); "
          f"median/MAD: window {rule.window}, min_drop {rule.min_drop}, noise_sigmas {rule.noise_sigmas}, "
          f"max_allowed_drop {rule.max_allowed_drop}; Otava: window {otava['window']}, "
          f"max_pvalue {otava['max_pvalue']}, min_magnitude {otava['min_magnitude']}\n")
    print(markdown(table))
    meets = verdict(table)
    print("\nmeets the targets: " + ", ".join(f"{m}: {'yes' if ok else 'no'}" for m, ok in meets.items()))
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
