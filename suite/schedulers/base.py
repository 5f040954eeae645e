"""Where runs execute, behind one small interface (after submitit's executors): what a run
asks the scheduler for, a check of a whole submission before any of it is made, submitting a
group of runs, describing a submission without making it (the dry run), and accounting for a
run that ended without writing its record. The launcher speaks only this interface; a backend
is one module here, one file in conf/cluster/ and its tests."""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


class SchedulerRefused(Exception):
    """The scheduler will not take a submission; the message says why. Nothing was submitted
    unless the message says otherwise."""


class AccountingUnavailable(RuntimeError):
    """The scheduler's accounting cannot be asked here (a sweep folder copied off the cluster:
    no sacct, or sacct failing); the message says why."""


@dataclass
class PlannedRun:
    """A sweep point, planned: what the launcher hands a scheduler."""

    idx: int
    overrides: List[str]
    typed: Any            # suite.config.SuiteConfig
    plan: Any             # suite.plan.RunPlan
    run_dir: Path
    config: Dict[str, Any]
    config_hash: str
    cost: float           # expected length, for ordering (suite.plan.estimated_cost)

    @property
    def label(self) -> str:
        from hydra.core.utils import filter_overrides

        return " ".join(filter_overrides(self.overrides)) or "(defaults)"


class Scheduler(abc.ABC):
    """One backend. `folder`: submitit's folder for pickles and logs (may hold %j)."""

    name: str = ""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @abc.abstractmethod
    def resources(self, run: PlannedRun) -> Dict[str, Any]:
        """What the run asks for; runs asking for the same go out as one submission."""

    def check(self, groups: Sequence[Sequence[PlannedRun]]) -> None:
        """Raise SchedulerRefused if the scheduler would refuse any group (nothing submitted)."""

    @abc.abstractmethod
    def submit(self, group: Sequence[PlannedRun], job_function: Callable,
               job_args: Callable[[PlannedRun], tuple],
               started: Optional[Callable[[PlannedRun, Any], None]] = None) -> List[Any]:
        """Submit a group (equal resources); one submitit job per run, in order. A scheduler
        that waits for a run before returning calls `started(run, job)` once it is submitted."""

    def node_names(self, partition: Optional[str]) -> List[str]:
        """The nodes a run can be placed on by name (cluster.nodelist; submit.each_node)."""
        import socket

        return [socket.gethostname()]

    def describe(self, group: Sequence[PlannedRun]) -> str:
        """What submitting the group would send (the dry run); empty if nothing worth showing."""
        return ""

    def account(self, job: Any) -> Tuple[str, Dict[str, Any]]:
        """(status, details) of a job that ended without its run writing a record."""
        return "error", {}

    def node_failure(self, job: Any, peer_lost: bool = False) -> Optional[Tuple[str, Dict[str, Any]]]:
        """While a job waits or runs, or after its surviving ranks wrote that a peer vanished
        (`peer_lost`): if a node under it failed, stop what is left of the job and return
        (error naming the node, details); else None."""
        return None

    def unfinished(self, run_dirs: Sequence[Path]) -> List[str]:
        """Of runs submitted earlier that have no record yet: write a record for those whose
        job has ended (from the scheduler's own account) and return the names of the others.
        Raises AccountingUnavailable where the scheduler's account cannot be asked."""
        return []


def group_runs(scheduler: Scheduler, runs: Sequence[PlannedRun]) -> List[List[PlannedRun]]:
    """Runs grouped by equal resources, shortest expected job first within a group and the
    group holding the shortest job first."""
    keys = [json.dumps(scheduler.resources(r), sort_keys=True, default=str) for r in runs]
    return [[runs[i] for i in group] for group in group_by_key([(k, r.cost) for k, r in zip(keys, runs)])]


def group_by_key(keys_and_costs: List[Tuple[Any, float]]) -> List[List[int]]:
    """Indices grouped by equal key, ordered by cost within and across groups (pure)."""
    groups: Dict[Any, List[int]] = {}
    order = sorted(range(len(keys_and_costs)), key=lambda i: (keys_and_costs[i][1], i))
    for i in order:
        groups.setdefault(keys_and_costs[i][0], []).append(i)
    return list(groups.values())


def wait_until_done(job: Any, poll_s: float = 0.25, check: Optional[Callable[[], Any]] = None,
                    check_every_s: float = 5.0) -> Any:
    """Wait for the job to end; every `check_every_s` call `check()`, and return what it returns
    as soon as that is not None (a node failure). None when the job ended by itself."""
    import time

    last = time.monotonic()
    while not job.done():
        time.sleep(poll_s)
        if check is not None and time.monotonic() - last >= check_every_s:
            last = time.monotonic()
            found = check()
            if found is not None:
                return found
    return None


def submitted_scheduler(run_dir: Path) -> Optional[str]:
    """The scheduler a run was submitted to, from its submission.json."""
    from suite import results

    path = Path(run_dir) / results.SUBMISSION_FILE
    return json.loads(path.read_text()).get("scheduler") if path.exists() else None
