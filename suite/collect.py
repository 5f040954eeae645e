"""Reconciliation with Slurm: a run that was submitted but left no result.json gets a record
whose status comes from Slurm's accounting (sacct). Used by the launcher once a job ends and
by `python -m suite.report` after a submit-and-exit sweep."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from suite import results

# Slurm job state -> record status. A job that COMPLETED without a record is an error too.
SLURM_STATUS = {
    "TIMEOUT": "timeout", "DEADLINE": "timeout", "CANCELLED": "cancelled",
    "OUT_OF_MEMORY": "oom", "NODE_FAIL": "node_fail", "PREEMPTED": "preempted",
    "FAILED": "error", "BOOT_FAIL": "error", "COMPLETED": "error",
}
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING",
              "COMPLETING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


@dataclass(frozen=True)
class SlurmJobState:
    job_id: str
    state: str       # first word of sacct's State ("CANCELLED by 0" -> "CANCELLED")
    elapsed: str
    exit_code: str


def status_from_slurm(state: str) -> Optional[str]:
    """The record status for a finished job's state; None while the job has not finished."""
    if state in UNFINISHED:
        return None
    return SLURM_STATUS.get(state, "error")


def parse_sacct(text: str) -> Dict[str, SlurmJobState]:
    """sacct -X -P -n -o JobID,State,Elapsed,ExitCode output -> state per job id."""
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0]:
            states[parts[0]] = SlurmJobState(parts[0], parts[1].split()[0] if parts[1] else "UNKNOWN",
                                             parts[2], parts[3])
    return states


def sacct_states(job_ids: List[str]) -> Dict[str, SlurmJobState]:
    if not job_ids:
        return {}
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,Elapsed,ExitCode",
                          "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"sacct failed: {out.stderr.strip()}")
    return parse_sacct(out.stdout)


@dataclass
class Reconciled:
    recorded: List[str]     # runs given a record from Slurm's state
    unfinished: List[str]   # runs still pending or running


def reconcile(sweep_dir: Path) -> Reconciled:
    """Give every finished Slurm run of the sweep that has no record one from sacct."""
    waiting: Dict[str, Path] = {}
    for sub_path in sorted(Path(sweep_dir).glob(f"*/{results.SUBMISSION_FILE}")):
        run_dir = sub_path.parent
        if (run_dir / results.RESULT_FILE).exists():
            continue
        sub = json.loads(sub_path.read_text())
        if sub.get("scheduler") == "slurm" and sub.get("job_id"):
            waiting[sub["job_id"]] = run_dir
    outcome = Reconciled([], [])
    states = sacct_states(list(waiting))
    for job_id, run_dir in waiting.items():
        job = states.get(job_id)
        status = status_from_slurm(job.state) if job else None
        if status is None:
            outcome.unfinished.append(run_dir.name)
            continue
        if (run_dir / results.RESULT_FILE).exists():  # the run finished meanwhile
            continue
        results.write_record_from_submission(
            run_dir, status=status,
            error=f"Slurm job {job_id} ended {job.state} (exit code {job.exit_code}, elapsed "
                  f"{job.elapsed}) without writing a record",
            details={"slurm_state": job.state, "elapsed": job.elapsed, "exit_code": job.exit_code})
        outcome.recorded.append(run_dir.name)
    return outcome
