"""Slurm, through submitit's SlurmExecutor: one job array per set of equal resources, checked
first with `sbatch --test-only`; a run that ended without a record gets one from Slurm's
accounting (sacct). Pure parts: the sbatch parameters of a run, the batch script, sacct's
output."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from suite import results
from suite.schedulers.base import AccountingUnavailable, PlannedRun, Scheduler, SchedulerRefused

def asks_for_gpus(cfg: Any, plan: Any) -> bool:
    if cfg.cluster.request_gpus is not None:
        return cfg.cluster.request_gpus
    return plan.accelerator == "cuda"


def slurm_parameters(cfg: Any, plan: Any) -> Dict[str, Any]:
    """submitit SlurmExecutor parameters of one run: its own nodes, tasks and GPUs (one Slurm
    task per rank) and the site's sbatch knobs. Runs with equal parameters share an array."""
    c = cfg.cluster
    params: Dict[str, Any] = {
        "job_name": "suite",  # not per model: runs of equal resources share one array
        "time": c.timeout_min,
        "nodes": plan.nodes,
        "ntasks_per_node": plan.ranks_per_node,
        "gpus_per_node": plan.ranks_per_node if asks_for_gpus(cfg, plan) else None,
        "cpus_per_task": c.cpus_per_task,
        # Slurm 22.05+ does not pass sbatch's --cpus-per-task on to srun: say it again there
        "srun_args": ["--cpus-per-task", str(c.cpus_per_task)],
        "mem": f"{c.mem_gb}GB" if c.mem_gb else "0",  # 0: all of the node's memory
        "partition": c.partition,
        "account": c.account,
        "qos": c.qos,
        "constraint": c.constraint,
        "nodelist": c.nodelist,
        "exclusive": True if c.exclusive else None,
        "setup": list(c.setup) or None,
        "additional_parameters": dict(c.sbatch_extra) or None,
        "array_parallelism": c.array_parallelism,
        "signal_delay_s": c.signal_delay_s,
        "stderr_to_stdout": True,
    }
    return {k: v for k, v in params.items() if v is not None}


def sbatch_script(params: Dict[str, Any], folder: str, array_size: int, python: str) -> str:
    """The exact batch script submitit submits for an array of `array_size` runs."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{python} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **params)


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
    try:
        out = subprocess.run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,Elapsed,ExitCode",
                              "-j", ",".join(arrays)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:  # not installed here, or hanging
        raise AccountingUnavailable(f"sacct could not be run: {exc}") from exc
    if out.returncode != 0:
        raise AccountingUnavailable(f"sacct failed (exit {out.returncode}): "
                                    f"{out.stderr.strip() or out.stdout.strip()}")
    states = parse_sacct(out.stdout)
    return {j: states[j] for j in job_ids if j in states}


def parse_attempts(text: str) -> List[Tuple[str, str]]:
    """sacct -D -X -P -n -o State,NodeList: (state, node list) of every attempt of a job,
    requeued ones included (a job Slurm requeued after a node failure is PENDING again; only
    its earlier attempt says NODE_FAIL)."""
    attempts = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            attempts.append((parts[0].split()[0], parts[1]))
    return attempts


def parse_down_nodes(text: str) -> List[Tuple[str, str]]:
    """sinfo -h -N -o '%N|%t|%E' -> (node, 'state: reason') of nodes that are down, drained,
    failing or not responding (state ends in '*')."""
    down = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[0]:
            state = parts[1]
            if state.endswith("*") or state.rstrip("*~#!%$@^-") in ("down", "drain", "drng", "fail", "failg"):
                down.append((parts[0], f"{state}: {parts[2]}" if parts[2] not in ("", "none") else state))
    return down


def _cancel_until_gone(job_id: str, limit_s: float = 300.0, quiet_polls: int = 3) -> None:
    """Cancel the job until it has left Slurm's queue for good: its processes ended (signalled,
    then killed after KillWait), so nothing of the run writes after this. Once is not enough
    after a node failure: a job still completing ignores scancel, then Slurm requeues it
    (PENDING), and a requeued array task can be missing from squeue for a moment; so the job
    must be absent `quiet_polls` times in a row, a second apart."""
    import time

    deadline, absent = time.monotonic() + limit_s, 0
    while time.monotonic() < deadline and absent < quiet_polls:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
        state = out.stdout.strip()
        absent = absent + 1 if out.returncode == 0 and not state else 0
        if state and state != "COMPLETING":
            subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
        time.sleep(1)


def node_failure_of(job_id: str, peer_lost: bool = False,
                    grace_s: float = 10.0) -> Optional[Tuple[str, Dict[str, Any]]]:
    """If a node under the job failed: cancel what Slurm requeued (a benchmark run whose node
    died is recorded, not rerun behind the sweep's back) and name the failed nodes: those of
    the job's nodes that are down or not responding now.

    A failed node shows as an attempt that ended NODE_FAIL. `peer_lost`: the surviving ranks
    wrote that a peer vanished (a killed or hung run of several nodes). Then the job may have
    ended before Slurm declared the node dead (the accounting database lags slurmctld), so for
    up to `grace_s` we also look for one of the job's nodes going down."""
    import time

    deadline = time.monotonic() + (grace_s if peer_lost else 0.0)
    while True:
        out = subprocess.run(["sacct", "-D", "-X", "-P", "-n", "-o", "State,NodeList", "-j", job_id],
                             capture_output=True, text=True, timeout=60)
        attempts = parse_attempts(out.stdout) if out.returncode == 0 else []  # sacct may fail for a moment
        failed = [nodes for state, nodes in attempts if state == "NODE_FAIL"]
        job_nodes = failed[0] if failed else next(
            (nodes for _, nodes in reversed(attempts) if nodes and nodes != "None assigned"), "")
        down: List[Tuple[str, str]] = []
        if job_nodes:
            info = subprocess.run(["sinfo", "-h", "-N", "-n", job_nodes, "-o", "%N|%t|%E"],
                                  capture_output=True, text=True, timeout=60)
            down = parse_down_nodes(info.stdout)
        several = "," in job_nodes or "[" in job_nodes
        if failed or (peer_lost and several and down):
            break
        if time.monotonic() >= deadline:  # (sacct can list a job's first node only for a while)
            return None
        time.sleep(1.0)
    _cancel_until_gone(job_id)  # and a surviving rank 0 has written its own record
    named = ", ".join(f"{n} ({why})" for n, why in down) or f"one of {job_nodes} (none is down now)"
    how = (f"Slurm ended job {job_id} NODE_FAIL on {job_nodes}" if failed
           else f"job {job_id} on {job_nodes} lost a rank while a node of it went down")
    return (f"node failure: {how}; failed node: {named}. Slurm's requeued attempt was cancelled",
            {"slurm_state": "NODE_FAIL" if failed else None, "job_nodes": job_nodes,
             "failed_nodes": [n for n, _ in down]})


def sbatch_refusal(script: str) -> Optional[str]:
    """Why sbatch would refuse this batch script (its own words), or None if it would take it.
    --test-only validates the request against the cluster and submits nothing."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="suite-test-only-") as f:
        f.write(script)
        f.flush()
        try:
            out = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:  # not on PATH here, or hanging
            return f"sbatch --test-only could not be run here: {exc}"
    return None if out.returncode == 0 else (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}")


def reconcile(run_dirs: Sequence[Path]) -> List[str]:
    """Give every run (of those submitted to Slurm without a record) whose job has ended a
    record from sacct; return the names of the runs still pending or running."""
    waiting: Dict[str, Path] = {}
    for run_dir in run_dirs:
        sub_path = Path(run_dir) / results.SUBMISSION_FILE
        if (Path(run_dir) / results.RESULT_FILE).exists() or not sub_path.exists():
            continue
        sub = json.loads(sub_path.read_text())
        if sub.get("scheduler") == "slurm" and sub.get("job_id"):
            waiting[sub["job_id"]] = Path(run_dir)
    unfinished = []
    states = sacct_states(list(waiting))
    for job_id, run_dir in waiting.items():
        job = states.get(job_id)
        status = status_from_slurm(job.state) if job else None
        if status is None:
            unfinished.append(run_dir.name)
            continue
        if (run_dir / results.RESULT_FILE).exists():  # the run finished meanwhile
            continue
        results.write_record_from_submission(
            run_dir, status=status,
            error=f"Slurm job {job_id} ended {job.state} (exit code {job.exit_code}, elapsed "
                  f"{job.elapsed}) without writing a record",
            details={"slurm_state": job.state, "elapsed": job.elapsed, "exit_code": job.exit_code})
    return unfinished


class SlurmScheduler(Scheduler):
    name = "slurm"

    def resources(self, run: PlannedRun) -> Dict[str, Any]:
        return slurm_parameters(run.typed, run.plan)

    def _script(self, group: Sequence[PlannedRun]) -> str:
        return sbatch_script(self.resources(group[0]), str(Path(self.folder).absolute()), len(group),
                             sys.executable)

    def check(self, groups: Sequence[Sequence[PlannedRun]]) -> None:
        """sbatch --test-only for every array before any is submitted: a request the cluster
        cannot meet (more nodes or GPUs than it has) is one clear message, nothing half-submitted."""
        for group in groups:
            reason = sbatch_refusal(self._script(group))
            if reason is not None:
                raise SchedulerRefused(f"sbatch refused {describe_array(group, self.resources(group[0]))}:"
                                       f"\n  {reason}\nNothing was submitted.")

    def submit(self, group: Sequence[PlannedRun], job_function: Callable,
               job_args: Callable[[PlannedRun], tuple],
               started: Optional[Callable[[PlannedRun, Any], None]] = None) -> List[Any]:
        import submitit
        from submitit.core.utils import FailedJobError

        # No requeue on time-out: a benchmark that ran out of time is a `timeout` record.
        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=0)
        params = self.resources(group[0])
        executor.update_parameters(**params)
        try:
            jobs = executor.map_array(job_function, *zip(*[job_args(r) for r in group]))
        except FailedJobError as exc:  # refused after the check passed (a race, a limit)
            raise SchedulerRefused(f"sbatch refused {describe_array(group, params)}:\n  {str(exc).strip()}")
        print(f"Submitted array {jobs[0].job_id.split('_')[0]}: {len(group)} runs of "
              f"{group[0].plan.nodes} node(s) x {group[0].plan.ranks_per_node} ranks", flush=True)
        return jobs

    def node_names(self, partition: Optional[str]) -> List[str]:
        """The nodes of the partition (the default partition if None) that are up: idle,
        mixed or allocated (a down or drained node would leave its run pending)."""
        command = ["sinfo", "-h", "-N", "-t", "idle,mixed,allocated,completing", "-o", "%N"]
        if partition:
            command += ["-p", partition]
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except OSError as exc:  # no Slurm client on this machine (a laptop, a container)
            raise SchedulerRefused(f"submit.each_node needs Slurm's sinfo to list the nodes that are "
                                   f"up, and it cannot run here ({exc.strerror}: {command[0]}); run "
                                   "the sweep where Slurm's commands are on PATH") from None
        if out.returncode != 0:
            raise SchedulerRefused(f"sinfo failed: {out.stderr.strip()}")
        return sorted(set(out.stdout.split()))

    def describe(self, group: Sequence[PlannedRun]) -> str:
        return f"sbatch script:\n{self._script(group)}"

    @staticmethod
    def can_ask() -> bool:
        """Whether sbatch is on PATH here (the dry run puts each array to --test-only where it is)."""
        import shutil

        return shutil.which("sbatch") is not None

    def account(self, job: Any) -> Tuple[str, Dict[str, Any]]:
        state = sacct_states([str(job.job_id)]).get(str(job.job_id))
        if state is None:
            return "error", {}
        return (status_from_slurm(state.state) or "error",
                {"slurm_state": state.state, "elapsed": state.elapsed, "exit_code": state.exit_code})

    def node_failure(self, job: Any, peer_lost: bool = False) -> Optional[Tuple[str, Dict[str, Any]]]:
        return node_failure_of(str(job.job_id), peer_lost=peer_lost)

    def unfinished(self, run_dirs: Sequence[Path]) -> List[str]:
        return reconcile(run_dirs)


def describe_array(group: Sequence[PlannedRun], params: Dict[str, Any]) -> str:
    """What an array asks Slurm for, in the words of the config fields."""
    asked = ", ".join(f"{k}={params[k]}" for k in ("nodes", "ntasks_per_node", "gpus_per_node",
                                                  "cpus_per_task", "mem", "partition", "time")
                      if k in params)
    from suite.status import redact_label

    first = group[0]
    return (f"the job array of {len(group)} run(s) like #{first.idx} ({redact_label(first.label)}), asking for "
            f"{asked} (cluster={first.typed.cluster.name}: cluster.nodes, cluster.gpus_per_node, "
            "cluster.cpus_per_task, cluster.mem_gb, cluster.partition, cluster.timeout_min)")
