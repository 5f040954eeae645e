"""The result record: one `result.json` per run, whatever its outcome. Building the record
and classifying a failure are pure; writing is atomic; environment capture redacts secrets."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
SUBMISSION_FILE = "submission.json"
STATUSES = ("ok", "oom", "error", "nan", "killed", "hang", "timeout", "preempted", "cancelled",
            "node_fail", "invalid")

# Names of environment variables and config keys whose values must never be written.
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+(?=@)")
# Environment variables worth keeping in a record: they change what a benchmark measures.
_ENV_PREFIXES = ("NCCL_", "CUDA_", "DS_", "OMP_", "TORCH_", "SUITE_", "SLURM_JOB", "SLURM_ARRAY",
                 "SLURM_NNODES", "SLURM_NTASKS", "MASTER_", "WORLD_SIZE", "NVIDIA_")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def _schema_fields() -> frozenset:
    """Every field name of the suite's own config schemas. Some contain a credential word but
    hold no secret (data.token_dtype "uint16", model.experts_per_token 2, model.drop_tokens);
    redacting them made a record's config unusable for a rerun. The schema holds no secret of
    its own: credentials come in free-form names (cluster.env, environment variables), which
    are still matched."""
    import dataclasses

    from suite import config

    names, seen = set(), set()
    stack = [config.SuiteConfig]
    while stack:
        schema = stack.pop()
        if schema in seen:
            continue
        seen.add(schema)
        for f in dataclasses.fields(schema):
            names.add(f.name)
            kind = f.type if isinstance(f.type, type) else getattr(config, str(f.type), None)
            if dataclasses.is_dataclass(kind):
                stack.append(kind)
    return frozenset(names)


@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    return name not in _schema_fields() and bool(_SECRET_NAME.search(name))


def redact(name: str, value: Any) -> Any:
    """The value, or '<redacted>' if its name looks like a credential; URL passwords masked."""
    if isinstance(value, dict):
        return {k: redact(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(name, v) for v in value]
    if _is_secret_name(name):
        return "<redacted>"
    if isinstance(value, str) and "@" in value:
        return _URL_CREDENTIALS.sub("<redacted>", value)
    return value


def config_hash(config: Dict[str, Any]) -> str:
    """A short stable hash of a run's resolved config: the same benchmark gets the same hash."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def classify_exception(exc: BaseException) -> str:
    """Status for a run that raised: oom for any out-of-memory error, timeout/preempted for
    submitit's signal that the job will end, else error."""
    import torch

    if type(exc).__name__ == "UncompletedJobError":  # submitit, on Slurm's pre-limit signal
        return "timeout" if "timed-out" in str(exc) else "preempted"
    text = str(exc).lower()
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text \
            or "can't allocate memory" in text:  # torch's CPU allocator under a memory limit
        return "oom"
    return "error"


def status_of_losses(losses: Iterable[float]) -> tuple[str, Optional[str]]:
    for step, loss in enumerate(losses):
        if not math.isfinite(loss):
            return "nan", f"non-finite loss {loss} at step {step}"
    return "ok", None


# Messages of a rank whose peer died (gloo, NCCL): a symptom; the peer's own error is the cause.
_PEER_FAILURE_HINTS = ("connection closed", "connection reset", "broken pipe", "peer",
                       "remote process exited", "nccl communicator was aborted", "watchdog caught")


def rank_error_file(run_dir: Path, rank: int) -> Path:
    """Where a failing rank other than 0 leaves its status and message before it exits."""
    return Path(run_dir) / f".rank{rank}.error"


def read_rank_errors(run_dir: Path) -> Dict[int, dict]:
    """{rank: {status, message, time}} of every rank that left an error file."""
    errors = {}
    for path in Path(run_dir).glob(".rank*.error"):
        try:
            errors[int(path.name[5:-6])] = json.loads(path.read_text())
        except (ValueError, json.JSONDecodeError):  # being written
            continue
    return errors


def is_peer_failure(message: str) -> bool:
    return any(h in message.lower() for h in _PEER_FAILURE_HINTS)


def root_cause(errors: Dict[int, dict]) -> Optional[tuple[int, dict]]:
    """The error that ended a run, among every rank's {status, message, time}: the earliest that
    is not only a symptom of a peer's failure (a lost connection), else the earliest; ranks
    break ties. An OOM on rank 3 is the run's status, not rank 0's broken connection."""
    if not errors:
        return None
    causes = {r: e for r, e in errors.items() if not is_peer_failure(e["message"])} or errors
    return min(causes.items(), key=lambda item: (item[1].get("time", 0.0), item[0]))


def _git_revision() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError):
        return None


def capture_environment(hostnames: Optional[list[str]] = None) -> Dict[str, Any]:
    """Versions, devices, hosts, scheduler ids and the variables that change a measurement."""
    import deepspeed
    import torch

    cuda = torch.cuda.is_available()
    nccl = None
    if cuda:
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # ROCm builds report RCCL differently
            nccl = None
    variables = {k: redact(k, v) for k, v in sorted(os.environ.items())
                 if k.startswith(_ENV_PREFIXES)}
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "cuda": torch.version.cuda,
        "nccl": nccl,
        "driver": _driver_version() if cuda else None,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "device_count": torch.cuda.device_count() if cuda else os.cpu_count(),
        "hostname": socket.gethostname(),
        "hostnames": hostnames or [socket.gethostname()],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        "git_revision": _git_revision(),
        **fp32_matmul_settings(),
        "variables": variables,
    }


def fp32_matmul_settings() -> Dict[str, Any]:
    """How this process runs fp32 matmuls (the rank set it: device.set_fp32_matmul_precision):
    torch's precision ("highest": IEEE fp32; "high": TF32), its TF32 switches, and
    NVIDIA_TF32_OVERRIDE (0 forbids TF32 beneath torch). None where torch cannot say (its
    legacy and newer settings disagree)."""
    import torch

    def asked(read):
        try:
            return read()
        except RuntimeError:
            return None

    return {"fp32_matmul_precision": asked(torch.get_float32_matmul_precision),
            "allow_tf32": {"cuda_matmul": asked(lambda: torch.backends.cuda.matmul.allow_tf32),
                           "cudnn": asked(lambda: torch.backends.cudnn.allow_tf32)},
            "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE")}


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: a non-finite float is written as null (the status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def make_record(*, run_id: str, sweep_id: str, status: str, error: Optional[str],
                config: Dict[str, Any], axes: Dict[str, Any], metrics: Dict[str, Any],
                env: Dict[str, Any], started_at: str, finished_at: str) -> Dict[str, Any]:
    """The record as written to result.json (docs/runs-and-metrics.md)."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r} is not one of {STATUSES}")
    safe_config = redact("config", config)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "sweep_id": sweep_id,
        "status": status,
        "error": error,
        **axes,
        "config": safe_config,
        "config_hash": config_hash(safe_config),
        "metrics": _finite_or_none(metrics),
        "env": env,
        "started_at": started_at,
        "finished_at": finished_at,
    }


def write_record(run_dir: Path, record: Dict[str, Any]) -> Path:
    """Write result.json atomically: a reader sees the old file or the whole new one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".result.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=False, allow_nan=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; records are for everyone to read
        os.replace(tmp, run_dir / RESULT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return run_dir / RESULT_FILE


def read_record(path: Path) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def record_axes(cfg: Any, plan: Any) -> Dict[str, Any]:
    """The sweep axes as plain fields of the record (cfg: SuiteConfig, plan: RunPlan).
    (Invalid points have no plan: write_invalid_record picks their axes from the config.)"""
    from suite import models

    m = cfg.model
    axes = {
        "workload": cfg.workload.name,
        "data": cfg.data.name,
        "model": m.name,
        "model_family": m.family,
        "strategy": cfg.strategy.name,
        "engine": cfg.strategy.engine,
        "zero_stage": cfg.strategy.zero_stage,
        "offload_optimizer": cfg.strategy.offload_optimizer,
        "offload_params": cfg.strategy.offload_params,
        "optimizer": cfg.optimizer.name,
        "precision": plan.precision,
        "accelerator": plan.accelerator,
        "world_size": plan.world_size,
        "data_parallel": plan.data_parallel_size,
        "tensor_parallel": cfg.strategy.tensor_parallel,
        "pipeline_parallel": cfg.strategy.pipeline_parallel,
        "sequence_parallel": cfg.strategy.sequence_parallel,
        "activation_checkpointing": cfg.train.activation_checkpointing,
        "compile": cfg.train.compile,
        "check_parity": cfg.train.check_parity,
        "scaling": cfg.train.scaling,
        "repeat_index": cfg.train.repeat_index,
        "nodes": plan.nodes,
        "ranks_per_node": plan.ranks_per_node,
        "micro_batch_size": plan.micro_batch_size,
        "grad_accum_steps": plan.grad_accum_steps,
        "global_batch_size": plan.global_batch_size,
        "seq_len": m.seq_len,
        "n_params": models.param_count(m)["total"],
    }
    if cfg.workload.name != "train":  # a micro-benchmark trains nothing: these do not apply
        for key in _TRAINING_AXES:
            axes[key] = None
    return axes


_TRAINING_AXES = ("data", "model", "model_family", "data_parallel", "strategy", "engine", "zero_stage", "offload_optimizer", "offload_params",
                  "optimizer", "tensor_parallel", "pipeline_parallel", "sequence_parallel",
                  "activation_checkpointing", "compile", "check_parity", "scaling",
                  "micro_batch_size", "grad_accum_steps", "global_batch_size", "seq_len", "n_params")


def run_config(typed: Any, plan: Any) -> Dict[str, Any]:
    """The benchmark's config (a SuiteConfig) as a record holds it: every field, typed, without
    the sweep-level switches (submit, report), which do not change what is measured, and with
    what the plan resolved (precision=auto -> the precision that runs), so that a night's
    `auto` run and an explicit one of the same precision are the same configuration."""
    config = {name: _plain_redacted(getattr(typed, name), name)
              for name in typed.__dataclass_fields__ if name not in ("submit", "report")}
    config["precision"]["name"] = plan.precision
    return config if typed.workload.name == "train" else _micro_benchmark_config(config)


def _micro_benchmark_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A micro-benchmark's config is what it measures: its own fields, the nodes and ranks, the
    repeat; with include_bucket_sizes also the strategy's buckets and the precision. The model,
    optimizer and training fields do not change it, so a sweep that crosses them with a micro-
    benchmark plans one run per distinct measurement (equal configs have equal hashes)."""
    kept = {"workload": config["workload"], "cluster": config["cluster"],
            "train": {"repeat_index": config["train"]["repeat_index"]}}
    if config["workload"]["include_bucket_sizes"]:
        kept["strategy"] = {k: config["strategy"][k] for k in ("reduce_bucket_size", "allgather_bucket_size")}
        kept["precision"] = {"name": config["precision"]["name"]}
    if (config.get("precision") or {}).get("tf32"):  # a TF32 GEMM is another measurement; kept
        kept["precision"] = {**kept.get("precision", {}), "tf32": True}  # only when on: old keys stand
    return kept


def _plain_redacted(value: Any, name: str) -> Any:
    """A typed config as plain values, redacted, in one pass (planning calls this for every
    sweep point)."""
    if hasattr(value, "__dataclass_fields__"):
        return {field: _plain_redacted(getattr(value, field), field) for field in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {k: _plain_redacted(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_redacted(v, name) for v in value]
    return redact(name, value)


PREVIOUS_RESULT_FILE = "result.previous.json"


def write_submission(run_dir: Path, *, run_id: str, sweep_id: str, config: Dict[str, Any],
                     axes: Dict[str, Any], plan: Dict[str, Any], scheduler: str, job_id: Optional[str]) -> Path:
    """What the launcher knows of a run it started: the plan its ranks run (made once, shipped
    here), and enough to write the run's record if the run never does (cancelled, killed).
    Written before the job starts (job_id None), then again with the scheduler's job id. The
    first write begins a new attempt: the folder's earlier record (a resumed or forced run) is
    kept as result.previous.json and its ranks' error files are removed, so that nothing of
    the earlier attempt can be read as this one's outcome."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if job_id is None:
        if (run_dir / RESULT_FILE).exists():
            os.replace(run_dir / RESULT_FILE, run_dir / PREVIOUS_RESULT_FILE)
        for path in run_dir.glob(".rank*.error"):
            path.unlink(missing_ok=True)
    data = {"run_id": run_id, "sweep_id": sweep_id, "scheduler": scheduler, "job_id": job_id,
            "submitted_at": now_iso(), "config_hash": config_hash(config), "axes": axes,
            "config": config, "plan": plan}
    path = run_dir / SUBMISSION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


def write_record_from_submission(run_dir: Path, *, status: str, error: str,
                                 details: Optional[Dict[str, Any]] = None,
                                 rank_errors_win: bool = True) -> Path:
    """The record of a run that ended without writing its own, written by whoever found out
    (the launcher, or the report's reconciliation with Slurm's accounting). A rank's own error
    wins over the scheduler's word unless `rank_errors_win` is false (a node failure)."""
    sub = json.loads((Path(run_dir) / SUBMISSION_FILE).read_text())
    cause = root_cause(read_rank_errors(run_dir))
    if rank_errors_win and cause is not None and not is_peer_failure(cause[1]["message"]):
        # a rank said why before the run died: that beats the scheduler's word
        rank, found = cause
        status, error = found["status"], f"rank {rank}: {found['message']}"
    now = now_iso()
    record = make_record(
        run_id=sub["run_id"], sweep_id=sub["sweep_id"], status=status, error=error,
        config=sub["config"], axes=sub["axes"], metrics={},
        env={"hostname": socket.gethostname(), "job_id": sub["job_id"],
             "slurm_job_id": sub["job_id"] if sub["scheduler"] == "slurm" else None,
             "written_by": "launcher: the run left no record", **(details or {})},
        started_at=sub["submitted_at"], finished_at=now)
    return write_record(run_dir, record)


def write_node_failure(run_dir: Path, error: str, details: Dict[str, Any]) -> Path:
    """A run whose node failed ends as `node_fail`, whatever its surviving ranks saw (a peer
    that vanished, a time-out) or wrote: rank 0's record, if it wrote one, keeps its error as
    env.survivor_error and its metrics."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return write_record_from_submission(run_dir, status="node_fail", error=error, details=details,
                                            rank_errors_win=False)
    record = read_record(path)
    record["env"] = {**(record.get("env") or {}), **details, "survivor_error": record.get("error")}
    record.update(status="node_fail", error=error, finished_at=now_iso())
    return write_record(run_dir, record)


def write_invalid_record(run_dir: Path, config: Dict[str, Any], error: str) -> Path:
    """The record of a sweep point refused by the plan (submit.skip_invalid=true)."""
    def pick(group: str, key: str) -> Any:
        return (config.get(group) or {}).get(key)

    axes = {"model": pick("model", "name"), "model_family": pick("model", "family"), "strategy": pick("strategy", "name"),
            "zero_stage": pick("strategy", "zero_stage"), "optimizer": pick("optimizer", "name"),
            "precision": pick("precision", "name"), "nodes": pick("cluster", "nodes"),
            "micro_batch_size": pick("train", "micro_batch_size"),
            "global_batch_size": pick("train", "global_batch_size"),
            "scaling": pick("train", "scaling"), "repeat_index": pick("train", "repeat_index")}
    run_dir = Path(run_dir)
    now = now_iso()
    record = make_record(run_id=f"{run_dir.parent.name}/{run_dir.name}", sweep_id=run_dir.parent.name,
                         status="invalid", error=error, config=config, axes=axes, metrics={},
                         env={"hostname": socket.gethostname(), "written_by": "launcher: invalid point"},
                         started_at=now, finished_at=now)
    return write_record(run_dir, record)


def ok_config_hashes(sweep_dir: Path) -> Dict[str, Path]:
    """config hash -> run folder, for every run of the sweep whose record is ok (resume)."""
    done = {}
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}")):
        record = read_record(path)
        if record.get("status") == "ok":
            done[record["config_hash"]] = path.parent
    return done


# ---- reproduction: each run folder keeps what it ran with and how to run it again by hand ----

RERUN_FILE = "rerun.sh"


def engine_config(plan: Dict[str, Any]) -> tuple[str, Dict[str, Any]]:
    """(file name, contents): the exact DeepSpeed config a run passes to deepspeed.initialize,
    or for a PyTorch baseline (torch DDP, FSDP2) what its engine builds (suite/plan.py)."""
    if plan.get("torch_config"):
        return "torch_config.json", plan["torch_config"]
    return "deepspeed_config.json", plan["ds_config"]


def rerun_command(run_dir: Path, nodes: int, ranks_per_node: int, python: str, cwd: str) -> str:
    """A shell command that runs this one run again outside the sweep, with torchrun (no
    hostfile, no ssh): on one node as it is; across nodes from inside a Slurm allocation of
    those nodes (salloc), one torchrun per node through srun. The new record is written to
    <run folder>/rerun/ (docs/reproduce.md)."""
    module = f"-m suite.rerun {run_dir}"
    if nodes == 1:
        return (f"cd {cwd} && {python} -m torch.distributed.run --standalone --nnodes 1 "
                f"--nproc-per-node {ranks_per_node} {module}")
    head = "$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)"
    return (f"cd {cwd} && srun --nodes {nodes} --ntasks-per-node 1 bash -c "
            f"'{python} -m torch.distributed.run --nnodes {nodes} --nproc-per-node {ranks_per_node} "
            f"--rdzv-backend c10d --rdzv-endpoint {head}:29500 {module}'")


def write_reproduction(run_dir: Path, plan: Dict[str, Any], python: str, cwd: str) -> Dict[str, str]:
    """The engine's config file and rerun.sh in the run folder; returns {file name: text}."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name, config = engine_config(plan)
    command = rerun_command(run_dir.resolve(), plan["nodes"], plan["ranks_per_node"], python, cwd)
    files = {name: json.dumps(config, indent=2, default=str) + "\n",
             RERUN_FILE: ("#!/usr/bin/env bash\n# Runs this one run again by hand, outside the "
                          "sweep; the record goes to ./rerun/result.json.\nset -euo pipefail\n"
                          f"{command}\n")}
    for file, text in files.items():
        tmp = run_dir / f".{file}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / file)
    os.chmod(run_dir / RERUN_FILE, 0o755)
    return files
