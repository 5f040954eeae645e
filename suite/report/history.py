"""The history store: a Parquet dataset (one partition per sweep date, one file per sweep) of
every run row of earlier sweeps, which regressions and trends are computed against."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def append(history_dir: Path, frame: pd.DataFrame) -> int:
    """Add the sweep's rows (idempotent: writing the same sweep again replaces its file)."""
    if frame.empty:
        return 0
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sweep_id = str(frame.sweep_id.iloc[0])
    pq.write_to_dataset(table, root_path=str(history_dir), partition_cols=["sweep_date"],
                        basename_template=f"{sweep_id}-{{i}}.parquet",
                        existing_data_behavior="overwrite_or_ignore")
    return len(frame)


# What regressions, "what changed" and trends read of the history (not the configs and losses).
COLUMNS = ["sweep_id", "status", "finished_at", "config_key", "model", "strategy",
           "optimizer", "precision", "world_size", "tokens_per_s_per_device", "env_torch",
           "env_deepspeed", "env_cuda", "env_nccl", "env_driver", "env_device_name", "env_hostnames",
           "env_git_revision", "env_variables"]


def load(history_dir: Path, columns: Optional[List[str]] = None) -> pd.DataFrame:
    """The history's rows (only `columns`, where given). Files are read one by one so that
    sweeps written by other versions of the suite (other columns) still load."""
    files = sorted(Path(history_dir).glob("sweep_date=*/*.parquet"))
    if not files:
        return pd.DataFrame()
    parts = []
    for path in files:
        names = set(pq.read_schema(path).names)
        wanted = None if columns is None else [c for c in columns if c in names] + (
            ["config_json"] if "config_key" not in names and "config_json" in names else [])
        part = pq.read_table(path, columns=wanted).to_pandas()
        if "config_key" not in part and "config_json" in part:  # rows from before the key was kept
            from suite.report.analysis import configuration_key

            part["config_key"] = part.config_json.map(configuration_key)
        part["sweep_date"] = path.parent.name.split("=", 1)[1]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
