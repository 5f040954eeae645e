"""Collation: every run's result.json in a sweep folder -> one pandas DataFrame, one row per run.
An empty sweep still yields a frame with the full schema."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List

import pandas as pd

from suite.results import RESULT_FILE, read_record

AXES = ["model", "strategy", "zero_stage", "offload_optimizer", "offload_params", "optimizer",
        "precision", "accelerator", "world_size", "data_parallel", "tensor_parallel",
        "pipeline_parallel", "activation_checkpointing", "check_parity", "nodes", "ranks_per_node", "micro_batch_size",
        "grad_accum_steps", "global_batch_size", "seq_len", "n_params"]
METRICS = ["tokens_per_s", "tokens_per_s_per_device", "samples_per_s", "step_time_mean_s",
           "step_time_median_s", "step_time_p90_s", "step_time_std_s", "step_time_cv",
           "step_time_min_s", "step_time_max_s", "timed_steps", "flops_per_token",
           "tflops_per_device", "hw_tflops_per_device", "mfu", "hfu", "peak_tflops_per_device",
           "peak_memory_bytes", "peak_memory_reserved_bytes", "loss_first", "loss_last",
           "loss_all_finite", "init_s"]
ENV = ["torch", "deepspeed", "cuda", "nccl", "device_name", "device_count", "hostname",
       "slurm_job_id", "git_revision"]
COLUMNS = (["run_id", "sweep_id", "status", "error", "config_hash", "schema_version"] + AXES
           + METRICS + [f"env_{k}" for k in ENV]
           + ["started_at", "finished_at", "config_json", "loss_per_step_json"])


def find_records(sweep_dir: Path) -> List[Path]:
    return sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"))


def flatten(record: Dict[str, Any]) -> Dict[str, Any]:
    """One record as one flat row: axes and metrics as columns, the config as JSON text."""
    row = {k: record.get(k) for k in COLUMNS if not k.startswith(("env_", "config_json", "loss_per_step"))}
    row.update({k: (record.get("metrics") or {}).get(k) for k in METRICS})
    row.update({f"env_{k}": (record.get("env") or {}).get(k) for k in ENV})
    row["config_json"] = json.dumps(record.get("config"), sort_keys=True)
    row["loss_per_step_json"] = json.dumps((record.get("metrics") or {}).get("loss_per_step"))
    return row


def to_frame(records: Iterable[Dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([flatten(r) for r in records], columns=COLUMNS)
    for column in METRICS:
        if column != "loss_all_finite":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame.sort_values("run_id", kind="stable").reset_index(drop=True)


def load_sweep(sweep_dir: Path) -> pd.DataFrame:
    return to_frame(read_record(p) for p in find_records(sweep_dir))


def ok_config_hashes(sweep_dir: Path) -> Dict[str, Path]:
    """config hash -> run folder, for every run of the sweep whose record is ok (resume)."""
    done = {}
    for path in find_records(sweep_dir):
        record = read_record(path)
        if record.get("status") == "ok":
            done[record["config_hash"]] = path.parent
    return done
