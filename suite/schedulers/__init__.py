"""The schedulers runs are submitted to, by `cluster.scheduler` name."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Type

from suite.schedulers.base import PlannedRun, Scheduler, SchedulerRefused, group_runs  # noqa: F401
from suite.schedulers.local import LocalScheduler
from suite.schedulers.slurm import SlurmScheduler

SCHEDULERS: Dict[str, Type[Scheduler]] = {"local": LocalScheduler, "slurm": SlurmScheduler}


def get(name: str, folder: str) -> Scheduler:
    return SCHEDULERS[name](folder)


def unfinished(sweep_dir: Path) -> List[str]:
    """Reconcile a sweep with its schedulers: runs that ended without a record get one from
    the scheduler's account; returns the names of the runs still pending or running."""
    from suite.results import RESULT_FILE, SUBMISSION_FILE
    from suite.schedulers.base import submitted_scheduler

    waiting: Dict[str, list] = {}
    for sub in sorted(Path(sweep_dir).glob(f"*/{SUBMISSION_FILE}")):
        if not (sub.parent / RESULT_FILE).exists():
            waiting.setdefault(submitted_scheduler(sub.parent), []).append(sub.parent)
    return [name for scheduler, dirs in waiting.items() if scheduler in SCHEDULERS
            for name in SCHEDULERS[scheduler](folder="").unfinished(dirs)]
