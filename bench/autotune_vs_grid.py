"""experiment=autotune against the full grid of the same space, side by side in one run: the best
configuration each finds, the run-seconds each spends (sum of the runs' run_wall_s) and the
runs each starts; and, from the grid's ddp runs, the memory model's predicted growth of peak
memory with micro-batch size against the measured growth (on the CPU only growth can be
compared: the resident set includes the runtime).

    python bench/autotune_vs_grid.py [--space KEY=V1,V2 ...] [fixed overrides ...]

The default space and overrides are the ones docs/autotune.md quotes: the tiny GPT with
256-token samples on 2 CPU ranks, strategy ddp/zero1/zero2/zero3 x micro-batch 1/4/16 x
recompute none/full, a declared 1 GiB device (DeepSpeed's whole reduce bucket rules ZeRO 1-3
out). Not part of run_all.py: it runs ~30 jobs."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = ["strategy=ddp,zero1,zero2,zero3", "train.micro_batch_size=1,4,16",
         "train.activation_checkpointing=none,full"]
FIXED = ["model.seq_len=256", "optimizer=sgd_momentum", "cluster.gpu_memory_gb=1",
         "train.warmup_steps=2", "train.timed_steps=12"]


def sweep(results: Path, *overrides: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "suite.sweep", "-m", *overrides], cwd=REPO,
                          env={**os.environ, "SUITE_RESULTS_DIR": str(results)},
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    [folder] = [p for p in results.iterdir() if p.is_dir()]
    return folder


def label(record: dict, keys: list) -> str:
    return " ".join(f"{k.split('.')[-1]}={record['config'][k.split('.')[0]][k.split('.')[-1]]}"
                    if "." in k else f"{k}={record[k]}" for k in keys)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--space", action="append", help="KEY=V1,V2 (repeatable)")
    parser.add_argument("fixed", nargs="*")
    args = parser.parse_args(argv)
    space = args.space or SPACE
    fixed = args.fixed or FIXED
    keys = [s.split("=", 1)[0] for s in space]
    as_search = []
    for s in space:
        key, values = s.split("=", 1)
        as_search.append(f"{'' if key == 'strategy' else '+'}hydra.sweeper.autotune.space.{key}='{values}'")
    with tempfile.TemporaryDirectory() as tmp:
        search = sweep(Path(tmp) / "search", "experiment=autotune", *as_search, *fixed)
        summary = json.loads((search / "autotune.json").read_text())
        grid = sweep(Path(tmp) / "grid", *space, "submit.try_anyway=true", *fixed)
        runs = [json.loads(p.read_text()) for p in grid.glob("*/result.json")]
    ok = [r for r in runs if r["status"] == "ok"]
    fits = [r for r in ok if r["metrics"]["memory_required_bytes"] <= 2 ** 30]
    best_grid = max(fits, key=lambda r: r["metrics"]["tokens_per_s_per_device"])
    grid_seconds = sum(r["metrics"]["run_wall_s"] or 0 for r in runs)
    outcomes: dict = {}
    for p in summary["points"]:
        outcomes[p["outcome"]] = outcomes.get(p["outcome"], 0) + 1
    growth = []
    plain = {(r["model"], r["activation_checkpointing"], r["micro_batch_size"]): r["metrics"]
             for r in ok if r["strategy"] == "ddp"}
    for (model, recompute, mb), m in sorted(plain.items()):
        smallest = min(b for (mo, rc, b) in plain if (mo, rc) == (model, recompute))
        if mb == smallest:
            continue
        base = plain[model, recompute, smallest]
        growth.append({"model": model, "recompute": recompute, "micro_batch": f"{smallest}->{mb}",
                       "predicted_mib": (m["memory_predicted_bytes"] - base["memory_predicted_bytes"]) / 2 ** 20,
                       "measured_mib": (m["peak_memory_bytes"] - base["peak_memory_bytes"]) / 2 ** 20})
    figures = {"space": space, "fixed": fixed,
               "autotune": {"best": summary["best"], "runs": summary["runs"], "run_seconds": summary["run_seconds"],
                            "outcomes": outcomes, "margin": summary["margin"]},
               "grid": {"best_that_fits": label(best_grid, keys), "runs": len(runs), "run_seconds": grid_seconds},
               "activation_growth": growth}
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
