"""Dispatch benchmark: planning plus submitting an N-configuration sweep to the local Slurm
cluster in submit-and-exit mode (the jobs are cancelled afterwards), and the dry run of the
same sweep. `python bench/dispatch.py [--configs N]` (slurm/local-cluster.sh up first)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep(results_dir: str, configs: int, *extra: str) -> float:
    env = {**os.environ, "SUITE_RESULTS_DIR": results_dir}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "suite.sweep", "-m", "cluster=slurm_local",
                           "strategy=ddp", "optimizer=adamw", f"train.seed=range({configs})", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=int, default=1000)
    args = parser.parse_args(argv)
    # cancelled jobs that had started may still write logs while the folder is removed
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        dry = sweep(tmp, args.configs, "submit.dry_run=true")
        submitted = sweep(tmp, args.configs, "submit.wait=false")
        jobs = [json.loads(p.read_text())["job_id"] for p in Path(tmp).glob("*/*/submission.json")]
        arrays = sorted({j.split("_")[0] for j in jobs})
        subprocess.run(["scancel", *arrays], check=False)
        for _ in range(60):  # until Slurm has let go of them
            queue = subprocess.run(["squeue", "-h", "-j", ",".join(arrays)], capture_output=True, text=True)
            if not queue.stdout.strip():
                break
            time.sleep(0.5)
    figures = {"configs": args.configs, "dry_run_s": dry, "submit_and_exit_s": submitted,
               "jobs_submitted": len(jobs)}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
