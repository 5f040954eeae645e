"""The only code that reads the job environment and starts torch.distributed: each rank of a
run comes here, trains, and rank 0 writes the run's result record, also when it fails."""
from __future__ import annotations

import datetime
import json
import os
import time
import zlib
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig

from suite import metrics, plan as planning, results

# Messages of a rank whose peer died: the peer's own error is the one worth reporting.
_PEER_FAILURE_HINTS = ("connection closed", "connection reset", "broken pipe", "peer")


def distributed_env() -> Dict[str, Any]:
    """RANK, WORLD_SIZE, MASTER_ADDR/PORT (port derived from the job id) from submitit's
    job environment, exported for torch.distributed's env:// initialisation."""
    import submitit

    # submitit draws the port from 20000-60000, which overlaps Linux's ephemeral range
    # (32768-60999): an outgoing connection can hold it (EADDRINUSE). Stay below that range,
    # derived from the job id so every rank of the job agrees; a MASTER_PORT set by the user wins.
    job_id = submitit.JobEnvironment().job_id
    os.environ.setdefault("MASTER_PORT", str(20000 + zlib.crc32(job_id.encode()) % 12000))
    dist = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                  overwrite=True)
    job = submitit.JobEnvironment()
    return {"rank": dist.rank, "world_size": dist.world_size, "local_rank": dist.local_rank,
            "local_world_size": dist.local_world_size, "hostnames": list(job.hostnames),
            "job_id": job.job_id}


def _prepare_process(accelerator: str, local_world_size: int, extra_env: Dict[str, str]) -> None:
    os.environ.update({k: str(v) for k, v in extra_env.items()})
    if accelerator == "cpu":
        # Before `import deepspeed`: it picks its accelerator (and gloo) on import.
        os.environ["DS_ACCELERATOR"] = "cpu"
        threads = max(1, (os.cpu_count() or 1) // local_world_size)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)  # ranks x threads > cores ran 3-4x slower (FACTS.md)


def _rank_error_file(run_dir: Path, rank: int) -> Path:
    return run_dir / f".rank{rank}.error"


def _collect_rank_errors(run_dir: Path, world_size: int, wait_s: float = 3.0) -> Dict[int, dict]:
    """{rank: {status, message}} that other ranks left behind (they exit at once so that no
    rank hangs)."""
    deadline = time.monotonic() + wait_s
    errors: Dict[int, dict] = {}
    while True:
        for rank in range(1, world_size):
            path = _rank_error_file(run_dir, rank)
            if rank not in errors and path.exists():
                try:
                    errors[rank] = json.loads(path.read_text())
                except json.JSONDecodeError:  # being written; next round
                    pass
        if len(errors) == world_size - 1 or time.monotonic() > deadline:
            return errors
        time.sleep(0.1)


def _peer_failed(message: str) -> bool:
    return any(h in message.lower() for h in _PEER_FAILURE_HINTS)


def _main_error(own_status: str, own: str, others: Dict[int, dict]) -> tuple[str, str]:
    """(status, error) of the run: rank 0's own, unless rank 0 only saw a peer fail."""
    if others and _peer_failed(own):
        rank, error = min(others.items())
        return error["status"], f"rank {rank}: {error['message']}"
    return own_status, f"rank 0: {own}"


class Watchdog:
    """Ends a run in which no training step completes for `timeout_s` seconds (a hang: a rank
    stuck in a collective or a kernel); `on_hang(step)` runs first (rank 0 records `hang`)."""

    def __init__(self, timeout_s: float, on_hang) -> None:
        self.timeout_s, self.on_hang = timeout_s, on_hang
        self.last, self.step = time.monotonic(), -1

    def beat(self, step: int) -> None:
        self.last, self.step = time.monotonic(), step

    def start(self) -> "Watchdog":
        import threading

        def watch() -> None:
            while True:
                time.sleep(min(1.0, self.timeout_s / 10))
                if time.monotonic() - self.last > self.timeout_s:
                    try:
                        self.on_hang(self.step)
                    finally:
                        os._exit(1)

        threading.Thread(target=watch, name="suite-watchdog", daemon=True).start()
        return self


def run_rank(cfg: DictConfig, run_dir: Path, sweep_id: str) -> Optional[Dict[str, Any]]:
    """Run this rank's share of one benchmark run. Rank 0 returns the record it wrote."""
    started_at = results.now_iso()
    dist = distributed_env()
    rank, world = dist["rank"], dist["world_size"]
    typed = planning.to_object(cfg)
    import torch

    plan = planning.plan_run(typed, local_gpus=torch.cuda.device_count())
    resolved = results.run_config(typed, plan)
    if plan.world_size != world:
        raise RuntimeError(f"the job has {world} tasks but the plan wants world size "
                           f"{plan.world_size}: the launcher and the plan disagree")
    _prepare_process(plan.accelerator, dist["local_world_size"], typed.cluster.env)

    def write(status: str, error: Optional[str], run_metrics: Dict[str, Any],
              rank_errors: Dict[int, str]) -> Dict[str, Any]:
        env = results.capture_environment(dist["hostnames"])
        record = results.make_record(
            run_id=f"{sweep_id}/{run_dir.name}", sweep_id=sweep_id, status=status, error=error,
            config=resolved, axes=results.record_axes(typed, plan), metrics=run_metrics,
            env={**env, "rank_errors": {str(k): v["message"] for k, v in rank_errors.items()} or None},
            started_at=started_at, finished_at=results.now_iso())
        record["attempts"] = env["slurm_restart_count"] + 1  # a requeued (preempted) run counts up
        results.write_record(run_dir, record)
        return record

    def on_hang(step: int) -> None:
        if rank == 0:
            write("hang", f"no training step completed within train.step_timeout_s="
                          f"{typed.train.step_timeout_s:g} s (last completed step: {step}); "
                          "the watchdog ended the run", {}, {})

    status, error, run_metrics, rank_errors = "ok", None, {}, {}
    try:
        import deepspeed
        from suite.workload.train import run_training

        # a peer that never arrives is an error record, not a hang (the watchdog starts later)
        deepspeed.init_distributed(auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(seconds=typed.cluster.init_timeout_s))
        watchdog = Watchdog(typed.train.step_timeout_s, on_hang).start()
        if typed.workload.name != "gpt":
            from suite.workload.micro import run_micro_benchmark

            ceilings = run_micro_benchmark(typed, plan)
            return write("ok", None, ceilings, {}) if rank == 0 else None
        measured = run_training(typed, plan, beat=watchdog.beat)
        status, error = results.status_of_losses(measured.losses)
        run_metrics = metrics.run_metrics(
            n_layers=typed.model.n_layers, d_model=typed.model.d_model,
            n_heads=typed.model.n_heads, seq_len=typed.model.seq_len,
            vocab_size=typed.model.vocab_size, world_size=plan.world_size,
            global_batch_size=plan.global_batch_size, step_times_s=measured.step_times_s,
            losses=measured.losses, peak_memory_bytes=measured.peak_memory_bytes,
            peak_memory_reserved_bytes=measured.peak_memory_reserved_bytes,
            device_name=measured.device_name, dtype=plan.precision,
            recompute=typed.train.activation_checkpointing != "none")
        run_metrics["init_s"] = measured.init_s
        run_metrics["loss_per_step"] = measured.losses  # warm-up included; the parity check reads it
        run_metrics["memory_capacity_bytes"] = measured.memory_capacity_bytes
        run_metrics["comm_bytes_per_step"] = measured.comm_bytes_per_step
        run_metrics["compiled_graphs"] = measured.compiled_graphs
        run_metrics["graph_breaks"] = measured.graph_breaks
        run_metrics.update(metrics.model_state_memory(
            n_params=results.record_axes(typed, plan)["n_params"], precision=plan.precision,
            optimizer=typed.optimizer.name, zero_stage=typed.strategy.zero_stage,
            dp=plan.sharding_size, model_parallel=plan.tensor_parallel * plan.pipeline_parallel,
            offload_optimizer=typed.strategy.offload_optimizer,
            offload_params=typed.strategy.offload_params))
        run_metrics["deepspeed_estimate_bytes"] = metrics.deepspeed_estimate(typed, plan)
    except Exception as exc:  # every failure becomes a record
        status = results.classify_exception(exc)
        message = f"{type(exc).__name__}: {exc}"
        if status == "timeout":
            message = (f"reached the time limit (cluster.timeout_min={typed.cluster.timeout_min}): "
                       f"Slurm signalled {typed.cluster.signal_delay_s} s before it ({message})")
        if rank != 0:
            path = _rank_error_file(run_dir, rank)
            path.with_suffix(".tmp").write_text(json.dumps({"status": status, "message": message}))
            os.replace(path.with_suffix(".tmp"), path)
            traceback.print_exc()
            os._exit(1)  # leave now, so rank 0 (maybe blocked in a collective) is released
        traceback.print_exc()
        rank_errors = _collect_rank_errors(run_dir, world)
        status, error = _main_error(status, message, rank_errors)
        if not rank_errors and _peer_failed(message):
            # a peer vanished without a word: killed by a signal (or the OOM killer)
            status = "killed"
            error = f"a rank ended without an error message (killed by a signal?); rank 0 saw: {message}"
    if rank != 0:
        return None
    return write(status, error, run_metrics, rank_errors)
