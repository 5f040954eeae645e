"""The schedulers runs are submitted to, by `cluster.scheduler` name."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Type

from suite.schedulers.base import (AccountingUnavailable, PlannedRun, Scheduler, SchedulerRefused,  # noqa: F401
                                  group_runs)
from suite.schedulers.local import LocalScheduler
from suite.schedulers.slurm import SlurmScheduler

SCHEDULERS: Dict[str, Type[Scheduler]] = {"local": LocalScheduler, "slurm": SlurmScheduler}


def get(name: str, folder: str) -> Scheduler:
    return SCHEDULERS[name](folder)


@dataclass
class Reconciliation:
    """What reconciling a sweep with its schedulers found."""

    unfinished: List[str] = field(default_factory=list)  # runs still pending or running
    unknown: List[str] = field(default_factory=list)     # runs without a record, not looked up
    skipped: Optional[str] = None                        # why they were not (no accounting here)


def reconcile(sweep_dir: Path) -> Reconciliation:
    """Reconcile a sweep with its schedulers: runs that ended without a record get one from
    the scheduler's account. Where that account cannot be asked (a sweep folder copied off the
    cluster), the runs without a record are `unknown` and `skipped` says why."""
    from suite.results import RESULT_FILE, SUBMISSION_FILE
    from suite.schedulers.base import submitted_scheduler

    waiting: Dict[str, list] = {}
    for sub in sorted(Path(sweep_dir).glob(f"*/{SUBMISSION_FILE}")):
        if not (sub.parent / RESULT_FILE).exists():
            waiting.setdefault(submitted_scheduler(sub.parent), []).append(sub.parent)
    found = Reconciliation()
    for scheduler, dirs in waiting.items():
        if scheduler not in SCHEDULERS:
            continue
        try:
            found.unfinished += SCHEDULERS[scheduler](folder="").unfinished(dirs)
        except AccountingUnavailable as exc:
            found.unknown += [d.name for d in dirs if not (d / RESULT_FILE).exists()]
            found.skipped = f"{scheduler}: {exc}"
    return found


def unfinished(sweep_dir: Path) -> List[str]:
    """The runs of the sweep without a record once reconciled (those whose state could not be
    looked up included)."""
    found = reconcile(sweep_dir)
    return found.unfinished + found.unknown
