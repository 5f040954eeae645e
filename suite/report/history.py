"""The history store: a Parquet dataset (one partition per sweep date, one file per sweep) of
every run row of earlier sweeps, which regressions and trends are computed against."""
from __future__ import annotations

from pathlib import Path

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


def load(history_dir: Path) -> pd.DataFrame:
    """Every row of the history. Files are read one by one so that sweeps written by other
    versions of the suite (other columns) still load: missing columns become empty."""
    files = sorted(Path(history_dir).glob("sweep_date=*/*.parquet"))
    if not files:
        return pd.DataFrame()
    parts = []
    for path in files:
        part = pq.read_table(path).to_pandas()
        part["sweep_date"] = path.parent.name.split("=", 1)[1]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
