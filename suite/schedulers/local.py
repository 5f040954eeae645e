"""This machine: one run at a time through submitit's local executor (runs side by side would
disturb each other's timings), each with as many processes as the run has ranks."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from suite.schedulers.base import PlannedRun, Scheduler, wait_until_done

log = logging.getLogger(__name__)

#: where the ranks of a local run meet: they share this machine, whose own name need not
#: resolve (a laptop, a container); submitit would give them its host name
MASTER_ADDR = "127.0.0.1"


@contextlib.contextmanager
def _job_environment(**variables: str):
    """Variables the job inherits: submitit's local executor starts the job's controller with a
    copy of this process's environment, taken when it submits."""
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LocalScheduler(Scheduler):
    name = "local"

    def resources(self, run: PlannedRun) -> Dict[str, Any]:
        return {"run": run.idx}  # every run alone: they go one after another

    def submit(self, group: Sequence[PlannedRun], job_function: Callable,
               job_args: Callable[[PlannedRun], tuple],
               started: Optional[Callable[[PlannedRun, Any], None]] = None) -> List[Any]:
        import submitit

        from suite.rank import MASTER_ADDR_VARIABLE
        from suite.status import redact_label

        executor = submitit.LocalExecutor(folder=self.folder)
        jobs = []
        for run in group:
            log.info(f"\t#{run.idx} : {redact_label(run.label)} ({run.plan.world_size} ranks, {run.plan.accelerator})")
            executor.update_parameters(
                tasks_per_node=run.plan.ranks_per_node,
                gpus_per_node=run.plan.ranks_per_node if run.plan.accelerator == "cuda" else 0,
                timeout_min=run.typed.cluster.timeout_min, stderr_to_stdout=True)
            with _job_environment(**{MASTER_ADDR_VARIABLE: MASTER_ADDR}):  # the ranks' rendezvous
                job = executor.submit(job_function, *job_args(run))
            if started is not None:  # its job id, for `python -m suite.status`, while it runs
                started(run, job)
            wait_until_done(job)  # the next run starts only when this one has ended
            jobs.append(job)
        return jobs
