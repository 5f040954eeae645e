"""Collation benchmark: the report over N run records, and over a history of M rows.
Prints seconds and peak memory; `python bench/collation.py [--runs N] [--history-rows M]`."""
from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from suite import results
from suite.config import ReportConfig
from suite.report import history
from suite.report.build import report_sweep
from suite.report.collate import load_sweep

STRATEGIES = ["ddp", "zero1", "zero2", "zero3", "tp2", "pp2"]


def make_sweep(folder: Path, runs: int, sweep_id: str, seed: int = 0) -> None:
    """`runs` realistic records: strategies x world sizes x seeds, a few failures."""
    rng = random.Random(seed)
    for i in range(runs):
        strategy, world = STRATEGIES[i % 6], [8, 16, 32, 64][(i // 6) % 4]
        config = {"model": {"name": "gpt_1_3b"}, "strategy": {"name": strategy},
                  "cluster": {"nodes": world // 8}, "train": {"seed": i // 24, "repeat_index": 0}}
        tokens = 20000.0 * rng.uniform(0.9, 1.1)
        ok = i % 50 != 7
        record = results.make_record(
            run_id=f"{sweep_id}/{i}", sweep_id=sweep_id, status="ok" if ok else "error",
            error=None if ok else "RuntimeError: boom", config=config,
            axes={"model": "gpt_1_3b", "strategy": strategy, "optimizer": "adamw", "precision": "bf16",
                  "world_size": world, "data_parallel": world, "tensor_parallel": 1, "pipeline_parallel": 1,
                  "micro_batch_size": 4, "grad_accum_steps": 1, "global_batch_size": 4 * world,
                  "accelerator": "cuda", "scaling": "none", "repeat_index": 0},
            metrics={"tokens_per_s": tokens * world, "tokens_per_s_per_device": tokens,
                     "step_time_median_s": 0.4, "step_time_cv": 0.01, "tflops_per_device": 400.0,
                     "mfu": 0.45, "peak_memory_bytes": 40e9, "memory_capacity_bytes": 141e9,
                     "loss_per_step": [7.0] * 13} if ok else {},
            env={"torch": "2.13.0", "deepspeed": "0.19.8", "device_name": "NVIDIA H200",
                 "hostnames": [f"node{j}" for j in range(world // 8)], "variables": {}},
            started_at="2026-11-28T01:00:00+00:00", finished_at="2026-11-28T03:00:00+00:00")
        results.write_record(folder / f"{i}_run", record)


def make_history(root: Path, rows: int, template: pd.DataFrame) -> None:
    """`rows` history rows: the template sweep repeated over earlier nights."""
    nights = max(1, rows // len(template))
    for night in range(nights):
        frame = template.copy()
        frame["sweep_id"] = f"night{night:04d}"
        frame["sweep_date"] = f"2026-{1 + night // 28 % 12:02d}-{1 + night % 28:02d}"
        frame["finished_at"] = f"{frame.sweep_date.iloc[0]}T03:00:00+00:00"
        frame["tokens_per_s_per_device"] = frame.tokens_per_s_per_device * (1 + 0.01 * ((night % 5) - 2))
        history.append(root, frame)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--history-rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "2026-11-29_01-00-00"
        make_sweep(sweep, args.runs, sweep.name)
        start = time.perf_counter()
        report_sweep(sweep)
        report_s = time.perf_counter() - start
        root = Path(tmp) / "history"
        make_history(root, args.history_rows, load_sweep(sweep))
        rows = len(history.load(root))
        start = time.perf_counter()
        report = report_sweep(sweep, ReportConfig(history_dir=str(root)))
        history_s = time.perf_counter() - start
    figures = {"runs": args.runs, "report_s": report_s, "history_rows": rows,
               "report_with_history_s": history_s, "regressions_compared": len(report.regressions),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
