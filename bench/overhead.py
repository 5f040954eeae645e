"""Harness overhead: the suite's instrumented timed loop against a bare DeepSpeed loop of the
same engine, model and batches, measured three ways in one process pair:
1. rounds: alternating blocks of `--steps` steps (the ratio of their times);
2. paired steps: one bare step, one suite step, `--pairs` times; the ratio of the medians
   (per-step alternation keeps slow drift out; the median keeps out the machine's spikes);
3. the harness's own work per step, timed with a step that does nothing (what the suite adds
   to every step whatever the model: synchronisation, clocks, loss bookkeeping).
Run with 2 ranks: `DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 bench/overhead.py`."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import deepspeed
from deepspeed.accelerator import get_accelerator

from suite.config import SuiteConfig
from suite.plan import plan_run
from suite.workload.train import prepare, timed_loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()
    deepspeed.init_distributed(auto_mpi_discovery=False)
    cfg = SuiteConfig()
    plan = plan_run(cfg, local_gpus=0)
    engine, step_fn, batches, _ = prepare(cfg, plan)
    accel = get_accelerator()

    def bare(steps=range(args.steps)) -> float:
        """Wall time of the bare DeepSpeed loop over these step numbers."""
        accel.synchronize()
        start = time.perf_counter()
        for step in steps:
            for batch in batches[step % len(batches)]:
                loss = engine(batch)
                engine.backward(loss)
                engine.step()
        accel.synchronize()
        return time.perf_counter() - start

    def suite() -> float:
        accel.synchronize()
        start = time.perf_counter()
        timed_loop(step_fn, warmup=0, timed=args.steps)
        accel.synchronize()
        return time.perf_counter() - start

    bare(), suite()  # warm-up of both
    ratios = []
    for i in range(args.rounds):
        first, second = (bare, suite) if i % 2 == 0 else (suite, bare)
        a, b = first(), second()
        t_bare, t_suite = (a, b) if first is bare else (b, a)
        ratios.append(t_suite / t_bare)

    paired_bare, paired_suite = [], []
    for step in range(args.pairs):
        paired_bare.append(bare(range(step, step + 1)))
        paired_suite.append(timed_loop(lambda _: step_fn(step), warmup=0, timed=1)[0][0])

    import torch

    nothing = torch.zeros(())
    idle = 10_000
    start = time.perf_counter()
    timed_loop(lambda _: nothing, warmup=0, timed=idle)
    harness_s = (time.perf_counter() - start) / idle
    if int(os.environ.get("RANK", 0)) == 0:
        median_bare = statistics.median(paired_bare)
        print(json.dumps({"rounds": args.rounds, "steps": args.steps, "ratios": ratios,
                          "ratio": statistics.median(ratios), "pairs": args.pairs,
                          "paired_ratio": statistics.median(paired_suite) / median_bare,
                          "step_median_s": median_bare, "harness_per_step_s": harness_s,
                          "harness_fraction": harness_s / median_bare}), flush=True)
    deepspeed.comm.barrier()
    os._exit(0)  # skip gloo's racy teardown at interpreter exit (docs/behaviour.md)


if __name__ == "__main__":
    main()
