"""Slurm's commands besides submission: reconciliation (a run that was submitted but left no
result.json gets a record whose status comes from Slurm's accounting, sacct; used by the
launcher once a job ends and by `python -m suite.report` after a submit-and-exit sweep), and
sbatch --test-only, which says whether Slurm would take a batch script at all."""
from __future__ import annotations

import json
import re
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


def expand_job_id(job_id: str) -> List[str]:
    """sacct reports array tasks that never started as one line: '33_[0-2,5%4]' ->
    ['33_0', '33_1', '33_2', '33_5']."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


def parse_sacct(text: str) -> Dict[str, SlurmJobState]:
    """sacct -X -P -n -o JobID,State,Elapsed,ExitCode output -> state per job id."""
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0]:
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"
            expanded = expand_job_id(parts[0])
            for job_id in expanded:
                if len(expanded) == 1 or job_id not in states:  # a task's own line wins
                    states[job_id] = SlurmJobState(job_id, state, parts[2], parts[3])
    return states


def sacct_states(job_ids: List[str]) -> Dict[str, SlurmJobState]:
    if not job_ids:
        return {}
    # Ask by array: sacct says nothing of a task id that never started ('33_5'), only of
    # the array's summary line ('33_[5-99%1]').
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,Elapsed,ExitCode",
                          "-j", ",".join(arrays)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"sacct failed: {out.stderr.strip()}")
    states = parse_sacct(out.stdout)
    return {j: states[j] for j in job_ids if j in states}


def sbatch_refusal(script: str) -> Optional[str]:
    """Why sbatch would refuse this batch script (its own words), or None if it would take it.
    --test-only validates the request against the cluster and submits nothing."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="suite-test-only-") as f:
        f.write(script)
        f.flush()
        out = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
    return None if out.returncode == 0 else (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}")


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
