"""Collation: every run's result.json in a sweep folder -> one pandas DataFrame, one row per run.
An empty sweep still yields a frame with the full schema."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import pandas as pd

from suite import metric_registry
from suite.report.analysis import KEY_VERSION, configuration_key
from suite.results import RESULT_FILE, read_record

AXES = ["workload", "data", "model", "model_family", "strategy", "engine", "zero_stage", "offload_optimizer", "offload_params", "optimizer",
        "precision", "accelerator", "world_size", "data_parallel", "tensor_parallel",
        "pipeline_parallel", "sequence_parallel", "activation_checkpointing", "compile", "check_parity", "scaling", "repeat_index", "nodes", "ranks_per_node", "micro_batch_size",
        "grad_accum_steps", "global_batch_size", "seq_len", "n_params"]
METRICS = metric_registry.scalar_columns()  # one column each; lists and maps as JSON text below
# loss_per_step and comm_bytes_per_step are lists/maps: kept as JSON text columns
ENV = ["python", "torch", "deepspeed", "cuda", "nccl", "driver", "device_name", "device_count",
       "hostname", "hostnames", "slurm_job_id", "git_revision", "variables", "fp32_matmul_precision",
       "gpu_binding"]
COLUMNS = (["run_id", "sweep_id", "status", "error", "attempts", "config_hash", "config_key",
            "config_key_version", "schema_version"] + AXES
           + METRICS + [f"env_{k}" for k in ENV]
           + ["started_at", "finished_at", "sweep_date", "config_json", "loss_per_step_json",
              "comm_bytes_per_step_json", "micro_json", "per_rank_json", "throttle_reasons",
              "step_times_json"])
# each rank's own figures (metric name -> key in per_rank_json)
PER_RANK = {"rank_hosts": "hosts", "rank_step_time_s": "step_time_s",
            "rank_forward_time_s": "forward_time_s", "rank_forward_time_cv": "forward_time_cv",
            "rank_forward_times_s": "forward_times_s",
            "rank_peak_memory_bytes": "peak_memory_bytes"}


NUMERIC_AXES = ["zero_stage", "world_size", "data_parallel", "tensor_parallel", "pipeline_parallel",
                "sequence_parallel",
                "repeat_index", "nodes", "ranks_per_node", "micro_batch_size", "grad_accum_steps",
                "global_batch_size", "seq_len", "n_params", "schema_version", "attempts", "config_key_version"]


BOOL_COLUMNS = ["offload_optimizer", "offload_params", "compile", "check_parity"] + metric_registry.bool_columns()


def find_records(sweep_dir: Path) -> List[Path]:
    return sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"))


def flatten(record: Dict[str, Any]) -> Dict[str, Any]:
    """One record as one flat row: axes and metrics as columns, the config as JSON text."""
    metrics, env = record.get("metrics") or {}, record.get("env") or {}
    row = {k: record.get(k) for k in COLUMNS if not k.startswith(("env_", "config_", "loss_per_step"))}
    row.update({k: metrics.get(k) for k in METRICS})
    row.update({f"env_{k}": env.get(k) for k in ENV})
    for key in ("hostnames", "variables"):  # nested: kept as JSON text
        row[f"env_{key}"] = json.dumps(env.get(key), sort_keys=True) if env.get(key) is not None else None
    row["comm_bytes_per_step_json"] = json.dumps(metrics.get("comm_bytes_per_step")) \
        if metrics.get("comm_bytes_per_step") else None
    micro = {k: metrics[k] for k in ("gemm", "collectives") if k in metrics}
    row["micro_json"] = json.dumps(micro) if micro else None
    ranks = {key: metrics[name] for name, key in PER_RANK.items() if metrics.get(name) is not None}
    row["per_rank_json"] = json.dumps(ranks) if ranks else None
    reasons = metrics.get("throttle_reasons")
    row["throttle_reasons"] = ", ".join(reasons) if reasons else None
    # records before micro-benchmarks have none; before model families training was "gpt"
    row["workload"] = {"gpt": "train"}.get(record.get("workload"), record.get("workload") or "train")
    if row["workload"] == "train" and not row.get("engine"):  # records before the torch baselines
        row["engine"] = "deepspeed"
    row["config_hash"] = record.get("config_hash")
    row["config_json"] = json.dumps(record.get("config"), sort_keys=True)
    row["config_key"] = configuration_key(row["config_json"])
    row["config_key_version"] = KEY_VERSION
    row["loss_per_step_json"] = json.dumps((record.get("metrics") or {}).get("loss_per_step"))
    # each timed step's time, for confidence intervals (null in records from before they were kept)
    row["step_times_json"] = json.dumps(metrics["step_times_s"]) if metrics.get("step_times_s") else None
    return row


def to_frame(records: Iterable[Dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([flatten(r) for r in records], columns=COLUMNS)
    for column in METRICS + NUMERIC_AXES:
        if column not in BOOL_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in BOOL_COLUMNS:
        frame[column] = frame[column].astype("boolean")
    for column in COLUMNS:
        if frame[column].dtype == object:  # one type per column, so Parquet files agree
            frame[column] = frame[column].map(lambda v: None if v is None else str(v)).astype("string")
    if not frame.empty:  # one night per sweep, whatever the dates of its runs
        nights = {sweep: sweep_night(rows) for sweep, rows in frame.groupby("sweep_id", dropna=False)}
        frame["sweep_date"] = frame.sweep_id.map(nights).astype("string")
    return frame.sort_values("run_id", kind="stable").reset_index(drop=True)


def sweep_night(rows: pd.DataFrame) -> Optional[str]:
    """The night a sweep belongs to: the (UTC) date of its earliest run start, so that runs
    on both sides of midnight count as one night; rows without start times (from other
    versions of the suite) keep the earliest night they carry; else None."""
    for column in ("started_at", "sweep_date"):
        values = rows[column].dropna().astype(str) if column in rows else pd.Series(dtype=str)
        values = values[values != ""]
        if len(values):
            return min(values)[:10]
    return None


def load_sweep(sweep_dir: Path) -> pd.DataFrame:
    return to_frame(read_record(p) for p in find_records(sweep_dir))


