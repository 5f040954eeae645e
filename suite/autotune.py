"""The search behind `experiment=autotune`, as pure functions: the points of a search space, the
ones the plan or the memory model rules out (and the few ruled out by memory that are run anyway,
to check the model), successive halving over short runs, and the summary the report shows.
The sweeper (hydra_plugins/suite_launcher/autotune_sweeper.py) runs each rung's points through
the ordinary launcher; docs/autotune.md says how to use it.

Successive halving (Jamieson and Talwalkar 2016; Li et al. 2018, "Hyperband"): every candidate
gets a short run, the best 1/eta go on to a longer one, until `finalists` remain, which run at
full length; the winner and its margin come from the full-length runs only."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

# What became of a point of the space.
INVALID = "invalid"      # the plan refuses it (a layout that does not divide the world, ...)
MEMORY = "memory"        # the memory model says it does not fit: not run
BOUNDARY = "boundary"    # ruled out by memory, run once (short) to check the model; never a winner
HALVED = "halved"        # run short, not among the best of its rung
FAILED = "failed"        # its run did not end ok (an oom is evidence for the memory model)
FINALIST = "finalist"    # ran at full length


@dataclass
class Point:
    """One configuration of the space: its overrides, and what the search learnt of it."""

    overrides: List[str]
    outcome: Optional[str] = None
    reason: Optional[str] = None
    required_bytes: Optional[float] = None     # the memory model's need per device
    available_bytes: Optional[float] = None    # what the device has (declared or seen)
    runs: List[dict] = field(default_factory=list)  # per rung: run_id, steps, status, figures

    @property
    def label(self) -> str:
        return " ".join(o.split(".")[-1] for o in self.overrides)

    def last_value(self) -> Optional[float]:
        """Tokens/s per device of its latest ok run (None if that run failed)."""
        if not self.runs or self.runs[-1]["status"] != "ok":
            return None
        return self.runs[-1]["tokens_per_s_per_device"]


def space_points(space: Dict[str, Sequence]) -> List[Point]:
    """Every combination of the space's values ({override key: values}), in order."""
    keys = list(space)
    values = [[str(v).strip() for v in (space[k].split(",") if isinstance(space[k], str) else space[k])]
              for k in keys]
    return [Point([f"{k}={v}" for k, v in zip(keys, combo)]) for combo in itertools.product(*values)]


def boundary_points(ruled_out: Sequence[Point], k: int) -> List[Point]:
    """The k points the memory model rules out by the smallest margin (required / available):
    run anyway, short, to check the model where its verdict matters most."""
    ranked = sorted(ruled_out, key=lambda p: p.required_bytes / p.available_bytes)
    return list(ranked[:k])


def promote(points: Sequence[Point], keep: int) -> List[Point]:
    """The `keep` points with the highest tokens/s per device in their latest run (failed runs
    never go on; ties keep the space's order)."""
    ran = [p for p in points if p.last_value() is not None]
    return sorted(ran, key=lambda p: -p.last_value())[:keep]


def next_rung_size(n: int, reduction_factor: int, finalists: int) -> int:
    """How many of n candidates go on from a short rung: the best 1/eta, at least `finalists`."""
    return min(n, max(finalists, math.ceil(n / reduction_factor)))


def margin(best: Point, runner_up: Optional[Point]) -> Optional[float]:
    """How much faster the best finalist is than the runner-up (full-length runs)."""
    if runner_up is None or runner_up.last_value() in (None, 0):
        return None
    return best.last_value() / runner_up.last_value() - 1


def margin_noise(best: Point, runner_up: Optional[Point]) -> Optional[float]:
    """Two standard errors of the margin, from the finalists' own step times: each run's
    tokens/s has a relative standard error of about CV / sqrt(timed steps), and the margin
    (a ratio) about the root of their squares' sum. A margin below it is a tie, not a winner.
    (Steps within a run are not independent and runs differ from run to run, so this is a
    lower bound on the noise: repeats measure it properly.)"""
    if runner_up is None:
        return None
    spreads = []
    for p in (best, runner_up):
        run = p.runs[-1]
        if not run.get("step_time_cv") or not run.get("measured_steps"):
            return None
        spreads.append(run["step_time_cv"] ** 2 / run["measured_steps"])
    return 2 * math.sqrt(sum(spreads))


def run_seconds(points: Sequence[Point]) -> float:
    """Run-seconds spent: the sum of every run's wall time (run_wall_s, failed runs included)."""
    return float(sum(r.get("run_wall_s") or 0.0 for p in points for r in p.runs))


def grid_estimate(points: Sequence[Point]) -> Optional[float]:
    """What a full grid of the same space would cost at full length, estimated: each point that
    the plan allows (the ones the memory model rules out too: a grid would start them) at the
    mean wall time of the full-length runs measured. An estimate, and the report says so; the
    tests compare with a grid that really ran."""
    full = [r["run_wall_s"] for p in points for r in p.runs if r.get("final") and r.get("run_wall_s")]
    if not full:
        return None
    startable = [p for p in points if p.outcome != INVALID]
    return len(startable) * sum(full) / len(full)


def summary(points: Sequence[Point], settings: dict) -> dict:
    """autotune.json: what the report's Autotune section shows."""
    finalists = promote([p for p in points if p.outcome == FINALIST], keep=2)
    best = finalists[0] if finalists else None
    runner_up = finalists[1] if len(finalists) > 1 else None
    return {
        "settings": settings,
        "best": None if best is None else best.label,
        "best_overrides": None if best is None else best.overrides,
        "best_tokens_per_s_per_device": None if best is None else best.last_value(),
        "runner_up": None if runner_up is None else runner_up.label,
        "margin": None if best is None else margin(best, runner_up),
        "margin_noise": None if best is None else margin_noise(best, runner_up),
        "run_seconds": run_seconds(points),
        "runs": sum(len(p.runs) for p in points),
        "grid_points": sum(p.outcome != INVALID for p in points),
        "grid_estimate_s": grid_estimate(points),
        "points": [{"label": p.label, "overrides": p.overrides, "outcome": p.outcome, "reason": p.reason,
                    "required_bytes": p.required_bytes, "available_bytes": p.available_bytes,
                    "runs": p.runs} for p in points],
    }
