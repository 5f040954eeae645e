"""Runs every benchmark of the suite itself and writes their figures to bench/RESULTS.md with
the date and the machine. `python bench/run_all.py [--small] [--output FILE]`: --small runs
tiny sizes (the tests do, so the scripts cannot rot); figures from it mean nothing."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import collation  # noqa: E402
import default_sweep  # noqa: E402
import dispatch  # noqa: E402


def overhead(small: bool) -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    args = ["--rounds", "2", "--steps", "5", "--pairs", "5"] if small else []
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(HERE / "overhead.py"), *args], env=env, capture_output=True,
                          text=True, timeout=1200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    return json.loads(lines[-1])


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    small = args.small
    figures = {"overhead": overhead(small)}
    if shutil.which("sbatch") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
        figures["dispatch"] = dispatch.main(["--configs", "5" if small else "1000"])
    figures["collation"] = collation.main(["--runs", "20", "--history-rows", "200"] if small else [])
    figures["default_sweep"] = default_sweep.main(["strategy=ddp", "optimizer=adamw", "train.timed_steps=2"]
                                                  if small else [])
    o, c, d = figures["overhead"], figures["collation"], figures["default_sweep"]
    lines = ["# Benchmarks of the suite itself", "",
             f"{datetime.datetime.now().isoformat(timespec='seconds')} on {machine()}"
             + (" (--small: tiny sizes, figures not meaningful)" if small else ""), "",
             "| benchmark | figure | target |", "|---|---|---|",
             f"| harness overhead: suite's timed loop / bare DeepSpeed loop, tiny GPT, 2 CPU ranks, "
             f"{o['rounds']} alternating rounds of {o['steps']} steps | {o['ratio']:.4f} (median of rounds; "
             f"per-round {', '.join(f'{r:.3f}' for r in o['ratios'])}) | <= 1.01 |",
             f"| the same, {o['pairs']} paired steps (bare, suite, bare, ...) | {o['paired_ratio']:.4f} "
             f"(ratio of median step times; bare median {o['step_median_s'] * 1e3:.2f} ms) | <= 1.01 |",
             f"| the harness's own work per step (a step that does nothing) | "
             f"{o['harness_per_step_s'] * 1e6:.1f} us = {o['harness_fraction']:.2%} of the tiny GPT's "
             f"median step | |"]
    if "dispatch" in figures:
        p = figures["dispatch"]
        lines += [f"| plan + submit {p['configs']} configurations, submit-and-exit, local Slurm | "
                  f"{p['submit_and_exit_s']:.1f} s ({p['jobs_submitted']} jobs) | <= 10 s |",
                  f"| dry run of the same sweep | {p['dry_run_s']:.1f} s | |"]
    lines += [f"| report over {c['runs']} run records | {c['report_s']:.2f} s | <= 10 s |",
              f"| report over the same with a {c['history_rows']:,}-row history | "
              f"{c['report_with_history_s']:.2f} s (peak RSS {c['peak_rss_mib']:.0f} MiB) | <= 10 s |",
              f"| sweep `{d['overrides']}` from command to report ({d['runs']} runs, ops cached) | "
              f"{d['seconds']:.1f} s | <= 120 s |", "",
              "Commands: `python bench/run_all.py` (all; `slurm/local-cluster.sh up` first for "
              "dispatch), or each script alone (`bench/overhead.py` under torchrun, "
              "`bench/dispatch.py`, `bench/collation.py`, `bench/default_sweep.py`)."]
    # the sections below the table (model families, multi-node, the GPU check) come from other
    # commands: keep them
    kept = args.output.read_text().partition("\n## ") if args.output.exists() else ("", "", "")
    args.output.write_text("\n".join(lines) + "\n" + (f"\n## {kept[2]}" if kept[1] else ""))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
