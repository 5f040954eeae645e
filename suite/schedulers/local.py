"""This machine: one run at a time through submitit's local executor (runs side by side would
disturb each other's timings), each with as many processes as the run has ranks."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from suite.schedulers.base import PlannedRun, Scheduler, wait_until_done

log = logging.getLogger(__name__)


class LocalScheduler(Scheduler):
    name = "local"

    def resources(self, run: PlannedRun) -> Dict[str, Any]:
        return {"run": run.idx}  # every run alone: they go one after another

    def submit(self, group: Sequence[PlannedRun], job_function: Callable,
               job_args: Callable[[PlannedRun], tuple],
               started: Optional[Callable[[PlannedRun, Any], None]] = None) -> List[Any]:
        import submitit

        executor = submitit.LocalExecutor(folder=self.folder)
        jobs = []
        for run in group:
            log.info(f"\t#{run.idx} : {run.label} ({run.plan.world_size} ranks, {run.plan.accelerator})")
            executor.update_parameters(
                tasks_per_node=run.plan.ranks_per_node,
                gpus_per_node=run.plan.ranks_per_node if run.plan.accelerator == "cuda" else 0,
                timeout_min=run.typed.cluster.timeout_min, stderr_to_stdout=True)
            job = executor.submit(job_function, *job_args(run))
            if started is not None:  # its job id, for `python -m suite.status`, while it runs
                started(run, job)
            wait_until_done(job)  # the next run starts only when this one has ended
            jobs.append(job)
        return jobs
