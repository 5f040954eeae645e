"""Confidence intervals from recorded step times (`step_times_s`), by a percentile bootstrap:
each draw resamples a configuration's runs (its repeats) with replacement and, inside each drawn
run, its timed steps; a draw's rate is the mean over its runs of 1 / mean step time (steps per
second; tokens per step and device are a constant of the configuration). Both the step-to-step
and the run-to-run noise widen an interval; with one run only the first is seen. Shared by the
report (throughput rows, the best configuration's margin, scaling efficiencies) and the A/B
comparison. Pure; a fixed seed gives the same interval for the same records."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

DRAWS, LEVEL, SEED = 4000, 0.95, 0

Runs = Sequence[Sequence[float]]  # one list of timed step times (s) per run


def rate(runs: Runs) -> float:
    """Steps per second: the mean over the runs of 1 / mean step time."""
    return float(np.mean([1.0 / np.mean(r) for r in runs]))


def _draws(runs: Runs, rng: np.random.Generator, draws: int) -> np.ndarray:
    per_run = np.stack([1.0 / rng.choice(np.asarray(r, dtype=float), size=(draws, len(r))).mean(axis=1)
                        for r in runs])  # runs x draws
    if len(runs) == 1:
        return per_run[0]
    pick = rng.integers(0, len(runs), size=(draws, len(runs)))
    return per_run[pick, np.arange(draws)[:, None]].mean(axis=1)


def _percentiles(values: np.ndarray, level: float) -> Tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def rate_interval(runs: Runs, *, draws: int = DRAWS, level: float = LEVEL, seed: int = SEED) -> Tuple[float, float]:
    """(low, high) of the rate in steps per second."""
    return _percentiles(_draws(runs, np.random.default_rng(seed), draws), level)


def change_interval(base: Runs, new: Runs, *, draws: int = DRAWS, level: float = LEVEL,
                    seed: int = SEED) -> Tuple[float, float, float]:
    """(change, low, high): rate(new) / rate(base) - 1 and its interval."""
    rng = np.random.default_rng(seed)
    changes = _draws(new, rng, draws) / _draws(base, rng, draws) - 1.0
    return (rate(new) / rate(base) - 1.0, *_percentiles(changes, level))


def runs_by_configuration(frame: pd.DataFrame) -> Dict[str, List[List[float]]]:
    """Each configuration's runs' step times (ok training runs that recorded them)."""
    ok = frame[(frame.status == "ok") & frame.step_times_json.notna()] if "step_times_json" in frame else frame.iloc[:0]
    out: Dict[str, List[List[float]]] = {}
    for key, text in zip(ok.config_key, ok.step_times_json):
        steps = json.loads(text)
        if steps:
            out.setdefault(key, []).append(steps)
    return out


def scaled(point: float, change: float, low: float, high: float) -> Tuple[float, float]:
    """An interval for `point`, a figure proportional to 1 + change (an efficiency, a margin
    between configurations whose tokens per step differ): the bootstrap's relative spread
    carried over to it."""
    return point * (1.0 + low) / (1.0 + change), point * (1.0 + high) / (1.0 + change)


def excludes_zero(low: Optional[float], high: Optional[float]) -> bool:
    return low is not None and high is not None and not pd.isna(low) and (low > 0 or high < 0)
