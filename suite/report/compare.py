"""A/B comparison of two sweeps (`python -m suite.compare BASE NEW`): did an upgrade or a config
change make training faster or slower, and is the difference more than noise?

Configurations are matched by their configuration key (the config without the repeat index,
the key the history uses). Per configuration the change in tokens/s per device is
rate(NEW) / rate(BASE) - 1, where a side's rate is the mean over its repeats of each run's
1 / mean step time (tokens per step and device are the same on both sides: the configurations
are equal). Its interval is a percentile bootstrap that resamples the repeats and, inside each,
the timed steps, so that both the step-to-step and the run-to-run noise count. A verdict needs
at least two runs per side (submit.repeats): on a shared machine two runs of one configuration
have differed 2x with each run's own step times tight, so an interval from one run's steps
would call noise a change; with one run per side the interval is shown, the verdict is not
given. Pure: frames in, frames out."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import pandas as pd

from suite.report import intervals
from suite.report.analysis import configuration_labels, environment_diff
from suite.report.collate import AXES

FASTER, SLOWER, UNCHANGED = "faster", "slower", "no detectable change"
FEW_RUNS, UNKNOWN = "one run per side: add submit.repeats", "no step times"
MIN_RUNS = 2  # per side, for a verdict
COLUMNS = ["config_key", "label", "base_runs", "new_runs", "base_tokens_per_s_per_device",
           "new_tokens_per_s_per_device", "change", "low", "high", "verdict", "noise_seen", "what_differs"]


def bootstrap_change(base: Sequence[Sequence[float]], new: Sequence[Sequence[float]], *,
                     draws: int = intervals.DRAWS, level: float = intervals.LEVEL,
                     seed: int = intervals.SEED) -> Tuple[float, float, float]:
    """(change, low, high): rate(NEW) / rate(BASE) - 1 and its percentile-bootstrap interval
    (suite/report/intervals.py: repeats and each run's steps resampled)."""
    return intervals.change_interval(base, new, draws=draws, level=level, seed=seed)


def verdict(change: float, low: float, high: float, min_change: float) -> str:
    """Faster or slower when the whole interval lies on one side of zero and the change is at
    least `min_change` in size; otherwise no detectable change."""
    if low > 0 and change >= min_change:
        return FASTER
    if high < 0 and change <= -min_change:
        return SLOWER
    return UNCHANGED


def compare(base: pd.DataFrame, new: pd.DataFrame, *, min_change: float = 0.02, level: float = 0.95,
            draws: int = 4000, seed: int = 0) -> Tuple[pd.DataFrame, List[str], List[str]]:
    """(table, keys only in BASE, keys only in NEW) over the ok training runs of two sweeps."""
    base, new = (f[(f.status == "ok") & (f.workload == "train")] for f in (base, new))
    base_steps, new_steps = intervals.runs_by_configuration(base), intervals.runs_by_configuration(new)
    shared = [k for k in dict.fromkeys(new.config_key) if k in set(base.config_key)]
    rows = []
    for key in shared:
        b, n = base[base.config_key == key], new[new.config_key == key]
        b_runs, n_runs = base_steps.get(key, []), new_steps.get(key, [])
        row = {"config_key": key, "base_runs": len(b), "new_runs": len(n),
               "base_tokens_per_s_per_device": b.tokens_per_s_per_device.mean(),
               "new_tokens_per_s_per_device": n.tokens_per_s_per_device.mean(),
               "what_differs": environment_diff(b.iloc[-1], n.iloc[-1])}
        if b_runs and n_runs:
            change, low, high = bootstrap_change(b_runs, n_runs, draws=draws, level=level, seed=seed)
            repeated = min(len(b_runs), len(n_runs)) >= MIN_RUNS
            row.update(change=change, low=low, high=high,
                       verdict=verdict(change, low, high, min_change) if repeated else FEW_RUNS,
                       noise_seen="steps and repeats" if repeated else "steps only")
        else:  # records without step times: the point change only, no interval, no verdict
            row.update(change=row["new_tokens_per_s_per_device"] / row["base_tokens_per_s_per_device"] - 1.0,
                       low=None, high=None, verdict=UNKNOWN, noise_seen=None)
        rows.append({**row, **{a: n.iloc[0][a] for a in AXES if a in n}})
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=COLUMNS), _only(base, new), _only(new, base)
    table["label"] = configuration_labels(table)[1]  # the axes that vary, as the report names them
    return table[COLUMNS], _only(base, new), _only(new, base)


def _only(one: pd.DataFrame, other: pd.DataFrame) -> List[str]:
    return sorted(set(one.config_key) - set(other.config_key))


def summary_line(table: pd.DataFrame) -> str:
    counts = table.verdict.value_counts()
    return (f"{len(table)} configurations compared: " + ", ".join(
        f"{counts.get(v, 0)} {v}" for v in (FASTER, SLOWER, UNCHANGED, FEW_RUNS, UNKNOWN)
        if counts.get(v, 0) or v in (FASTER, SLOWER, UNCHANGED)))


def environments(base: pd.DataFrame, new: pd.DataFrame) -> str:
    """What differs between the two sweeps' environments (their latest runs), '' if nothing."""
    if base.empty or new.empty:
        return ""
    return environment_diff(base.sort_values("run_id").iloc[-1], new.sort_values("run_id").iloc[-1])


def any_slower(table: pd.DataFrame) -> bool:
    return bool((table.verdict == SLOWER).any())


def interval_text(low: Optional[float], high: Optional[float]) -> str:
    if low is None or pd.isna(low):
        return "—"
    return f"[{low * 100:+.1f}%, {high * 100:+.1f}%]"
