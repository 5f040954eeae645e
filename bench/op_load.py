"""What loading DeepSpeed's CPU ops costs a rank, with and without the suite's memoised
py-cpuinfo (suite.workload.device.ask_for_the_cpu_once), side by side in one run.

Each round starts two fresh processes on the CPU accelerator, one of each kind, in alternating
order; each loads DeepSpeed's shared-memory collectives (every CPU rank loads them), FusedAdam
(optimizer.implementation=deepspeed) and CPUAdam (ZeRO-Offload with DeepSpeed's Adam), built
once before the rounds, and reports the seconds of those loads and how often py-cpuinfo was
asked. The suite's own CPU runs use torch's Adam and load only the first, which asks nothing.
`python bench/op_load.py [--rounds N]` (the first call builds the two Adam ops: minutes)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPS = ("ShareMemCommBuilder", "FusedAdamBuilder", "CPUAdamBuilder")

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["SUITE_REPO"])
from suite.workload import device
os.environ.update(device.accelerator_environment("cpu"))
os.environ.update(device.extensions_environment(os.environ, sys.prefix, os.access(sys.prefix, os.W_OK)))
import cpuinfo
asked = [0]
inner = cpuinfo.get_cpu_info
def counting():  # counts the calls that reach py-cpuinfo itself
    asked[0] += 1
    return inner()
cpuinfo.get_cpu_info = counting
if sys.argv[1] == "once":
    device.ask_for_the_cpu_once()
from deepspeed.accelerator import get_accelerator
start = time.perf_counter()
for name in sys.argv[2:]:
    get_accelerator().create_op_builder(name).load()
print(json.dumps({"seconds": time.perf_counter() - start, "asked": asked[0]}))
"""


def one(kind: str) -> dict:
    env = {**os.environ, "SUITE_REPO": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, kind, *OPS], env=env, capture_output=True, text=True,
                          timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    one("once")  # the ops built and cached before anything is timed
    runs = {"plain": [], "once": []}
    for k in range(args.rounds):
        for kind in (("plain", "once") if k % 2 == 0 else ("once", "plain")):
            runs[kind].append(one(kind))
    out = {kind: {"median_s": statistics.median(r["seconds"] for r in rs), "asked": rs[0]["asked"],
                  "seconds": [round(r["seconds"], 2) for r in rs]} for kind, rs in runs.items()}
    out["saved_s"] = out["plain"]["median_s"] - out["once"]["median_s"]
    print(f"loading {', '.join(OPS)} (built), {args.rounds} alternating rounds:")
    for kind, label in (("plain", "DeepSpeed as shipped"), ("once", "py-cpuinfo asked once")):
        print(f"  {label:22s}: median {out[kind]['median_s']:.2f} s, py-cpuinfo asked {out[kind]['asked']}x "
              f"(rounds: {out[kind]['seconds']})")
    print(f"  saved per process: {out['saved_s']:.2f} s")
    return out


if __name__ == "__main__":
    main()
