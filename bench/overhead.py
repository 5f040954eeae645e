"""Harness overhead: the suite's instrumented timed loop against a bare DeepSpeed loop of the
same engine, model and batches, alternating in one process pair so drift hits both alike.
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
    args = parser.parse_args()
    deepspeed.init_distributed(auto_mpi_discovery=False)
    cfg = SuiteConfig()
    plan = plan_run(cfg, local_gpus=0)
    engine, step_fn, batches = prepare(cfg, plan)
    accel = get_accelerator()

    def bare() -> float:
        accel.synchronize()
        start = time.perf_counter()
        for step in range(args.steps):
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
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"rounds": args.rounds, "steps": args.steps, "ratios": ratios,
                          "ratio": statistics.median(ratios)}), flush=True)
    deepspeed.comm.barrier()
    os._exit(0)  # skip gloo's racy teardown at interpreter exit (FACTS.md)


if __name__ == "__main__":
    main()
