"""Collation benchmark: the report over N run records, and over a history of M rows (the
sweep repeated over the M / N nights before it, one sweep a night). Prints seconds and peak
memory (report_peak_rss_mib: the report's own, from a reset of the high-water mark; peak_rss_mib:
the whole process's, set-up included); `python bench/collation.py [--runs N] [--history-rows M]`.
`--agreement SERIES`: how often the verdicts from Otava on the nights the report gives it match
Otava's over a whole 300-night series (bench/RESULTS.md, "Report speed")."""
from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from suite import results
from suite.config import ReportConfig
from suite.report import history
from suite.report.build import report_sweep
from suite.report.collate import load_sweep, sweep_night

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
    """`rows` history rows: the template sweep repeated over the nights before its own, one
    sweep a night (the newest the night before the template's), each filed under its night."""
    nights = max(1, rows // len(template))
    tonight = pd.Timestamp(sweep_night(template))
    for night in range(nights):
        day = tonight - pd.Timedelta(days=nights - night)
        frame = template.copy()
        frame["sweep_id"] = f"night{night:04d}"
        frame["started_at"] = f"{day:%Y-%m-%d}T01:00:00+00:00"  # the night history.append files it under
        frame["finished_at"] = f"{day:%Y-%m-%d}T03:00:00+00:00"
        frame["tokens_per_s_per_device"] = frame.tokens_per_s_per_device * (1 + 0.01 * ((night % 5) - 2))
        history.append(root, frame)


def peak_rss_mib() -> float:
    """The process's peak resident set since the last reset_peak_rss() (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """The process's CPU seconds (user + system, all threads): less at the mercy of whatever
    else shares the cores than the wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak_rss() -> None:
    """From here on VmHWM counts anew (Linux: 5 > /proc/self/clear_refs), so that the report's
    peak is not the set-up's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# Synthetic series of --agreement: (name, noise, [(first and last nights ago, factor), ...]);
# each change multiplies the nights from a night drawn in that range (0 = tonight) on.
AGREEMENT_CASES = [("noise only, 2%", 0.02, []), ("noise only, 5%", 0.05, []),
                   ("10% drop 0-6 nights ago", 0.02, [((0, 6), 0.9)]),
                   ("10% drop 7-39 nights ago", 0.02, [((7, 39), 0.9)]),
                   ("7% drop 5-11 nights ago", 0.02, [((5, 11), 0.93)]),
                   ("10% drop 30-199 nights ago, 8% rise 0-9 ago", 0.02, [((30, 199), 0.9), ((0, 9), 1.08)])]


def tail_agreement(series: int, nights: int = 300, seed: int = 5, window: int = 7) -> list:
    """How often the nightly verdict (changepoints.decide, method otava) from Otava on each
    configuration's last otava_nights(window) nights, as the report runs it, is the verdict
    from Otava over all `nights` nights: per case of AGREEMENT_CASES, `series` series."""
    import numpy as np

    from suite.report import changepoints

    rng = np.random.default_rng(seed)
    out = []
    for name, noise, changes in AGREEMENT_CASES:
        rows = []
        for s in range(series):
            values = 1000.0 * (1 + noise * rng.standard_normal(nights))
            for (first, last), factor in changes:
                values[nights - 1 - int(rng.integers(first, last + 1)):] *= factor
            rows += [{"config_key": f"s{s}", "sweep_id": f"n{t:04d}", "sweep_date": f"n{t:04d}",
                      "finished_at": f"n{t:04d}", "tokens_per_s_per_device": v} for t, v in enumerate(values)]
        frame = pd.DataFrame(rows)
        regress = pd.DataFrame({"config_key": [f"s{s}" for s in range(series)], "verdict": "unchanged"})
        verdicts = [changepoints.decide(regress, changepoints.changes_per_configuration(
            frame, "otava", last_nights=last), "otava", min_nights=6, recent_nights=window).verdict
            for last in (None, changepoints.otava_nights(window))]
        same = verdicts[0] == verdicts[1]
        out.append({"case": name, "series": series, "same verdict": float(same.mean()),
                    "whole: alerts": int((verdicts[0] != "unchanged").sum()),
                    "tail: alerts": int((verdicts[1] != "unchanged").sum())})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--history-rows", type=int, default=1_000_000)
    parser.add_argument("--agreement", type=int, metavar="SERIES", default=0,
                        help="instead: how often Otava on the last nights gives the verdict of Otava over "
                             "300 nights, SERIES synthetic series per case (300: ~3 min on 2 cores)")
    args = parser.parse_args(argv)
    if args.agreement:
        rows = tail_agreement(args.agreement)
        for row in rows:
            print(json.dumps(row))
        return {"agreement": rows}
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "2026-11-29_01-00-00"
        make_sweep(sweep, args.runs, sweep.name)
        start, cpu = time.perf_counter(), cpu_s()
        report_sweep(sweep)
        report_s, report_cpu_s = time.perf_counter() - start, cpu_s() - cpu
        root = Path(tmp) / "history"
        make_history(root, args.history_rows, load_sweep(sweep))
        # the rows from the files' footers: loading them all would set the process's peak
        rows = sum(pq.ParquetFile(path).metadata.num_rows for path in root.glob("sweep_date=*/*.parquet"))
        nights = len(list(root.glob("sweep_date=*")))
        setup_peak = peak_rss_mib()
        reset_peak_rss()
        start, cpu = time.perf_counter(), cpu_s()
        report = report_sweep(sweep, ReportConfig(history_dir=str(root)))
        history_s, history_cpu_s = time.perf_counter() - start, cpu_s() - cpu
        report_peak = peak_rss_mib()
    figures = {"runs": args.runs, "report_s": report_s, "report_cpu_s": report_cpu_s, "history_rows": rows,
               "history_nights": nights, "report_with_history_s": history_s,
               "report_with_history_cpu_s": history_cpu_s, "regressions_compared": len(report.regressions),
               "regressions_found": int((report.regressions.verdict == "regression").sum()),
               "report_peak_rss_mib": report_peak, "setup_peak_rss_mib": setup_peak,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
