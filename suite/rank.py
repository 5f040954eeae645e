"""The only code that reads the job environment and starts torch.distributed: each rank of a
run comes here, trains, and rank 0 writes the run's result record, also when it fails."""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
import zlib
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig

from suite import metrics, plan as planning, results
from suite.workload import device  # imports nothing heavy: deepspeed comes after _prepare_process


#: the rendezvous address a scheduler gives its ranks when it knows better than the job's
#: first host name (the local scheduler: loopback, as its ranks share one machine)
MASTER_ADDR_VARIABLE = "SUITE_MASTER_ADDR"


def distributed_env() -> Dict[str, Any]:
    """RANK, WORLD_SIZE, MASTER_ADDR/PORT (port derived from the job id) from submitit's
    job environment, exported for torch.distributed's env:// initialisation. MASTER_ADDR is
    the job's first node (Slurm), or SUITE_MASTER_ADDR where the scheduler set it (the local
    scheduler: 127.0.0.1, so that a machine whose own name does not resolve still meets)."""
    import submitit

    # submitit draws the port from 20000-60000, which overlaps Linux's ephemeral range
    # (32768-60999): an outgoing connection can hold it (EADDRINUSE). Stay below that range,
    # derived from the job id so every rank of the job agrees; a MASTER_PORT set by the user wins.
    job_id = submitit.JobEnvironment().job_id
    os.environ.setdefault("MASTER_PORT", str(20000 + zlib.crc32(job_id.encode()) % 12000))
    dist = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                  overwrite=True)
    if os.environ.get(MASTER_ADDR_VARIABLE):
        os.environ["MASTER_ADDR"] = os.environ[MASTER_ADDR_VARIABLE]
    job = submitit.JobEnvironment()
    return {"rank": dist.rank, "world_size": dist.world_size, "local_rank": dist.local_rank,
            "local_world_size": dist.local_world_size, "hostnames": list(job.hostnames),
            "job_id": job.job_id}


def torchrun_env() -> Dict[str, Any]:
    """The same facts from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...), for a run
    started by hand outside the sweep (python -m suite.rerun: docs/reproduce.md)."""
    import socket

    env = os.environ
    return {"rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env.get("LOCAL_RANK", 0)),
            "local_world_size": int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            "hostnames": [socket.gethostname()], "job_id": env.get("TORCHELASTIC_RUN_ID", "rerun")}


def check_master_addr(addr: Optional[str], port: Optional[str] = None) -> None:
    """Fail at once when the rendezvous host does not resolve here: torch would retry it until
    cluster.init_timeout_s is out, and the record would only say that not every rank arrived."""
    import socket

    if not addr:
        raise RuntimeError("MASTER_ADDR is not set: the rank cannot find the rendezvous")
    try:
        socket.getaddrinfo(addr, int(port) if port else None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RuntimeError(
            f"the rendezvous host MASTER_ADDR={addr!r} (the job's first node) does not resolve on "
            f"{socket.gethostname()} ({exc}): every rank would wait out cluster.init_timeout_s. Make "
            f"{addr!r} resolvable on every node (DNS or /etc/hosts), or export {MASTER_ADDR_VARIABLE} "
            "with an address of that node that does (in cluster.setup)") from None


def _process_seconds() -> Optional[float]:
    """Seconds since this process started (its interpreter, imports and all): what a run costs
    in wall time, as a search that compares run-seconds counts it."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # psutil comes with DeepSpeed; without it the figure is null, not guessed
        return None


def _prepare_process(plan: planning.RunPlan, local_world_size: int, extra_env: Dict[str, str],
                     tf32: bool = False) -> None:
    """Before `import deepspeed` (it picks its accelerator on import): the plan's accelerator,
    the site's variables, a thread count that does not oversubscribe the cores, and how fp32
    matmuls run (precision.tf32; IEEE unless asked), for every workload."""
    # a rerun's config holds "<redacted>" for credentials: those come from the environment
    os.environ.update({k: str(v) for k, v in extra_env.items() if v != "<redacted>"})
    os.environ.update(device.accelerator_environment(plan.accelerator))
    os.environ.update(device.extensions_environment(os.environ, sys.prefix, os.access(sys.prefix, os.W_OK)))
    for lock in device.clear_stale_build_locks(os.environ.get("TORCH_EXTENSIONS_DIR"), time.time()):
        print(f"removed a stale op-build lock (its holder was killed): {lock}", file=sys.stderr)
    device.ask_for_the_cpu_once()  # before DeepSpeed loads an op
    threads = device.threads_per_rank(local_world_size, os.environ.get("SLURM_CPUS_PER_TASK"), os.cpu_count())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    device.set_fp32_matmul_precision(tf32)


#: how this rank chose its GPU (device.gpu_binding), for the record's env
_binding: Dict[str, Any] = {}


#: the host memory limit this rank set on itself: {"which", "previous", "note"}; empty: none
_host_limit: Dict[str, Any] = {}


def _limit_host_memory(plan: planning.RunPlan) -> Optional[str]:
    """On the CPU, hold this rank to its share of its node's host memory (the plan's
    host_memory_bytes / ranks per node, what the plan checked it against), so that a run that
    outgrows it fails in this rank with a MemoryError (torch: "can't allocate memory"), an
    `oom` record, instead of waking the kernel's OOM killer, which may kill anything on the
    machine. Called once the process group is up and before the model is built: the limit is
    what the process maps at this point plus the share's remainder beyond what it already
    holds resident (suite.memory.rank_memory_limit). Linux only; a lower limit already set is
    kept. Returns a description, also printed to the rank's log."""
    if plan.accelerator != "cpu" or not getattr(plan, "host_memory_bytes", None):
        return None
    import platform

    from suite import memory

    if platform.system() != "Linux":
        print("host memory limit: not set (the suite sets it on Linux only)", file=sys.stderr)
        return None
    import resource

    share = plan.host_memory_bytes / plan.ranks_per_node
    try:
        with open("/proc/self/status") as f:
            status = memory.parse_meminfo(f.read())
        name, limit = memory.rank_memory_limit(share, status, platform.release())
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
    except (OSError, KeyError, ValueError, AttributeError) as exc:  # a safety net never fails a run
        print(f"host memory limit: not set ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    gib = lambda v: f"{v / 2 ** 30:.2f} GiB"  # noqa: E731
    mapped = status["VmData" if name == "RLIMIT_DATA" else "VmSize"]
    if soft != resource.RLIM_INFINITY and soft <= limit:
        note = f"{name} {gib(soft)}, set before the run started (lower than this rank's share, {gib(share)})"
    else:
        resource.setrlimit(which, (limit, hard))
        _host_limit.update(which=which, previous=soft)
        note = (f"{name} {gib(limit)} = {gib(mapped)} mapped before the model is built + its share "
                f"{gib(share)} ({plan.host_memory_source}, / {plan.ranks_per_node} ranks) - "
                f"{gib(status['VmRSS'])} already resident")
    _host_limit["note"] = note
    print(f"host memory limit: {note}", file=sys.stderr, flush=True)
    return note


def _lift_host_memory_limit() -> None:
    """The limit back where it was (a failed rank still writes its error and the record)."""
    if "which" in _host_limit:
        import resource

        which, previous = _host_limit.pop("which"), _host_limit.pop("previous")
        resource.setrlimit(which, (previous, resource.getrlimit(which)[1]))


def _shipped_plan(run_dir: Path, typed: Any) -> planning.RunPlan:
    """The plan the launcher made and the dry run showed (submission.json), not a new one: a
    rank's view of the hardware or of its environment must not change what runs."""
    path = run_dir / results.SUBMISSION_FILE
    if not path.exists():
        raise RuntimeError(f"{path} is missing: runs are started by the suite's launcher, which "
                           "plans them (python -m suite.sweep -m ...)")
    submission = json.loads(path.read_text())
    plan = planning.RunPlan.from_dict(submission["plan"])
    if results.config_hash(results.run_config(typed, plan)) != submission["config_hash"]:
        raise RuntimeError("the rank composed another configuration than the launcher planned "
                           f"(config hash differs from {path}): the sweep's config files changed "
                           "after submission?")
    return plan


def _write_rank_error(run_dir: Path, rank: int, status: str, message: str, failed_at: float) -> None:
    path = results.rank_error_file(run_dir, rank)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "message": message, "time": failed_at}))
    os.replace(tmp, path)


class Watchdog:
    """Ends a run that stops making progress: no rendezvous, or no model and engine, within
    `cluster.init_timeout_s`; no training step within `train.step_timeout_s` (a rank stuck in a
    collective or a kernel).
    `on_hang(phase, step)` runs first, so rank 0 writes the record. It is the suite's only
    time-out: the process group's own is set longer (plan.collective_timeout_s), so NCCL's
    watchdog cannot kill a stuck rank before the record says what happened."""

    def __init__(self, on_hang) -> None:
        self.on_hang = on_hang
        self.last, self.step = time.monotonic(), -1
        self.phase, self.timeout_s = "rendezvous", float("inf")

    def expect(self, phase: str, timeout_s: float) -> None:
        self.phase, self.timeout_s, self.last = phase, timeout_s, time.monotonic()

    def beat(self, step: int) -> None:
        self.last, self.step = time.monotonic(), step

    def start(self) -> "Watchdog":
        import threading

        def watch() -> None:
            while True:
                time.sleep(min(1.0, self.timeout_s / 10))
                if time.monotonic() - self.last > self.timeout_s:
                    try:
                        self.on_hang(self.phase, self.step)
                    finally:
                        os._exit(1)

        threading.Thread(target=watch, name="suite-watchdog", daemon=True).start()
        return self


class _Recorder:
    """Rank 0's writer of the run's one record (also from the watchdog's thread)."""

    def __init__(self, run_dir: Path, sweep_id: str, typed: Any, plan: planning.RunPlan,
                 dist: Dict[str, Any]) -> None:
        self.run_dir, self.sweep_id, self.typed, self.plan, self.dist = run_dir, sweep_id, typed, plan, dist
        self.started_at = results.now_iso()

    def write(self, status: str, error: Optional[str], run_metrics: Dict[str, Any],
              rank_errors: Dict[int, dict]) -> Dict[str, Any]:
        env = results.capture_environment(self.dist["hostnames"])
        record = results.make_record(
            run_id=f"{self.sweep_id}/{self.run_dir.name}", sweep_id=self.sweep_id, status=status,
            error=error, config=results.run_config(self.typed, self.plan),
            axes=results.record_axes(self.typed, self.plan), metrics=run_metrics,
            env={**env, "gpu_binding": _binding.get("gpu_binding"),
                 "rank_errors": {str(k): v["message"] for k, v in rank_errors.items()} or None},
            started_at=self.started_at, finished_at=results.now_iso())
        record["attempts"] = env["slurm_restart_count"] + 1  # a requeued (preempted) run counts up
        results.write_record(self.run_dir, record)
        return record

    def on_hang(self, phase: str, step: int) -> None:
        """The watchdog ended the run: say why (a failed peer's error first)."""
        if self.dist["rank"] != 0:
            return
        c, t = self.typed.cluster, self.typed.train
        others = results.read_rank_errors(self.run_dir)
        cause = results.root_cause(others)
        if cause is not None:  # a rank failed and rank 0 waits for it in a collective
            self.write(cause[1]["status"], f"rank {cause[0]}: {cause[1]['message']}", {}, others)
        elif phase == "rendezvous":
            self.write("error", f"not every rank arrived within cluster.init_timeout_s={c.init_timeout_s} s "
                                f"(rendezvous at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')})",
                       {}, {})
        elif phase == "setup":
            self.write("hang", f"building the model and the DeepSpeed engine did not finish within "
                               f"cluster.init_timeout_s={c.init_timeout_s} s; the watchdog ended the run", {}, {})
        else:
            self.write("hang", f"no training step completed within train.step_timeout_s={t.step_timeout_s:g} s "
                               f"(last completed step: {step}); the watchdog ended the run", {}, {})


def run_rank(cfg: DictConfig | Dict[str, Any], run_dir: Path, sweep_id: str,
             dist: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """Run this rank's share of one benchmark run. Rank 0 returns the record it wrote.
    `dist`: the job's ranks and hosts (default: from submitit's job environment)."""
    dist = dist or distributed_env()
    rank, world = dist["rank"], dist["world_size"]
    typed = planning.to_object(cfg)
    plan = _shipped_plan(run_dir, typed)
    if plan.world_size != world:
        raise RuntimeError(f"the job has {world} tasks but the plan wants world size "
                           f"{plan.world_size}: the launcher and the plan disagree")
    _prepare_process(plan, dist["local_world_size"], typed.cluster.env, typed.precision.tf32)
    recorder = _Recorder(run_dir, sweep_id, typed, plan, dist)
    rank_errors: Dict[int, dict] = {}
    try:
        status, error, run_metrics = _run_workload(typed, plan, dist, Watchdog(recorder.on_hang))
    except Exception as exc:  # every failure becomes a record
        run_metrics = {}
        status, error, rank_errors = _failure(exc, typed, run_dir, rank, world)
    run_metrics = {**run_metrics, "run_wall_s": _process_seconds()}  # failed runs cost time too
    return recorder.write(status, error, run_metrics, rank_errors) if rank == 0 else None


def _run_workload(typed: Any, plan: planning.RunPlan, dist: Dict[str, Any], watchdog: Watchdog
                  ) -> tuple[str, Optional[str], Dict[str, Any]]:
    """Device, process group, then the workload: (status, error, metrics)."""
    import deepspeed

    visible = device.visible_gpus()
    device.check_hardware(plan.accelerator, device.deepspeed_accelerator(), dist["local_rank"], visible)
    device.check_compiled_ops(plan.compiled_ops, plan.accelerator)
    _binding["gpu_binding"] = device.gpu_binding(plan.accelerator, dist["local_rank"], visible)[1]
    device.select_device(plan.accelerator, dist["local_rank"], visible)  # before NCCL starts
    check_master_addr(os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    watchdog.expect("rendezvous", typed.cluster.init_timeout_s)
    watchdog.start()
    deepspeed.init_distributed(auto_mpi_discovery=False, timeout=datetime.timedelta(
        seconds=planning.collective_timeout_s(typed.cluster.init_timeout_s, typed.train.step_timeout_s)))
    _limit_host_memory(plan)  # before the model (or a micro-benchmark's buffers) is built
    if typed.workload.name != "train":  # no steps to beat: the whole benchmark is one
        watchdog.expect("steps", typed.train.step_timeout_s)
        from suite.workload.micro import run_micro_benchmark

        return "ok", None, run_micro_benchmark(typed, plan)
    from suite.workload.train import run_training

    watchdog.expect("setup", typed.cluster.init_timeout_s)
    measured = run_training(typed, plan, beat=watchdog.beat,
                            ready=lambda: watchdog.expect("steps", typed.train.step_timeout_s))
    status, error = results.status_of_losses(measured.losses)
    return status, error, _training_metrics(typed, plan, measured)


def _failure(exc: Exception, typed: Any, run_dir: Path, rank: int, world: int
             ) -> tuple[str, str, Dict[int, dict]]:
    """A rank other than 0 leaves its error and exits; rank 0 returns the run's (status, error,
    every rank's errors), the root cause across ranks."""
    failed_at = time.time()  # when it failed, not when it got round to saying so
    _lift_host_memory_limit()
    status = results.classify_exception(exc)
    message = f"{type(exc).__name__}: {exc}"
    if status == "oom" and _host_limit.get("note"):
        message += f" (this rank's host memory limit: {_host_limit['note']}; docs/memory.md)"
    if status == "timeout":
        message = (f"reached the time limit (cluster.timeout_min={typed.cluster.timeout_min}): "
                   f"Slurm signalled {typed.cluster.signal_delay_s} s before it ({message})")
    if rank != 0:  # the error file first: rank 0 may be waiting for it
        _write_rank_error(run_dir, rank, status, message, failed_at)
        traceback.print_exc()
        os._exit(1)  # leave now, so rank 0 (maybe blocked in a collective) is released
    traceback.print_exc()
    own = {"status": status, "message": message, "time": failed_at}
    rank_errors = _wait_for_rank_errors(run_dir, world)
    if not rank_errors and results.is_peer_failure(message):
        # a peer vanished without a word: killed by a signal (or the OOM killer)
        return ("killed", f"a rank ended without an error message (killed by a signal?); rank 0 saw: "
                f"{message}", rank_errors)
    cause_rank, cause = results.root_cause({**rank_errors, 0: own})
    return cause["status"], f"rank {cause_rank}: {cause['message']}", rank_errors


def _wait_for_rank_errors(run_dir: Path, world_size: int, wait_s: float = 3.0) -> Dict[int, dict]:
    """The error files other ranks left (they exit at once, so that no rank hangs): wait a
    little for every rank's, as a failing peer may still be writing."""
    deadline = time.monotonic() + wait_s
    while True:
        errors = results.read_rank_errors(run_dir)
        if len(errors) >= world_size - 1 or time.monotonic() > deadline:
            return errors
        time.sleep(0.1)


def _training_metrics(typed: Any, plan: planning.RunPlan, measured: Any) -> Dict[str, Any]:
    """Every metric of a training run from its raw measurements (formulas in suite.metrics)."""
    m, s = typed.model, typed.strategy
    run_metrics = metrics.run_metrics(
        model=m, world_size=plan.world_size,
        global_batch_size=plan.global_batch_size, step_times_s=measured.step_times_s,
        losses=measured.losses, peak_memory_bytes=measured.peak_memory_bytes,
        peak_memory_reserved_bytes=measured.peak_memory_reserved_bytes,
        device_name=measured.device_name, dtype=metrics.peak_dtype(plan.precision, typed.precision.tf32),
        recompute=typed.train.activation_checkpointing != "none")
    run_metrics.update(metrics.energy_metrics(measured.telemetry, tokens=run_metrics["tokens_per_s"]
                                              * sum(measured.step_times_s)))
    run_metrics["init_s"] = measured.init_s
    run_metrics.update(metrics.per_rank_metrics(measured.per_rank))
    run_metrics["loss_per_step"] = measured.losses  # warm-up included; the parity check reads it
    run_metrics["memory_capacity_bytes"] = measured.memory_capacity_bytes
    run_metrics["comm_bytes_per_step"] = measured.comm_bytes_per_step
    run_metrics["compiled_graphs"] = measured.compiled_graphs
    run_metrics["graph_breaks"] = measured.graph_breaks
    run_metrics.update(measured.moe or {})  # mixture of experts: routing over the timed steps
    run_metrics.update(metrics.model_state_memory(
        n_params=results.record_axes(typed, plan)["n_params"], precision=plan.precision,
        optimizer=typed.optimizer.name, zero_stage=s.zero_stage, dp=plan.sharding_size,
        model_parallel=plan.tensor_parallel * plan.pipeline_parallel,
        offload_optimizer=s.offload_optimizer, offload_params=s.offload_params))
    run_metrics["deepspeed_estimate_bytes"] = metrics.deepspeed_estimate(typed, plan)
    from suite.memory import predict_memory

    need = predict_memory(typed, plan)  # the memory model's terms (docs/memory.md)
    run_metrics.update(memory_activation_bytes_predicted=need["activation_bytes"],
                       memory_logits_bytes_predicted=need["logits_bytes"],
                       memory_buffer_bytes_predicted=need["buffer_bytes"],
                       memory_predicted_bytes=need["predicted_bytes"],
                       memory_required_bytes=need["required_bytes"])
    return run_metrics
