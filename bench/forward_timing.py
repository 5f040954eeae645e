"""Does timing each rank's forward passes (the straggler table's figure) change the step time?
The tiny GPT under ddp, one process group, the suite's own step function and timed loop, with
three forward timers swapped in step by step, interleaved so that drift of the machine falls on
all three alike:
- untimed: the forward pass called as it is, nothing around it;
- timed: the suite's timer for this accelerator (suite.workload.train.forward_timer: on the CPU
  perf_counter around the pass, on CUDA events read after the step);
- synchronised: the suite's old way, the device synchronised before and after every forward
  pass with perf_counter around it (on the CPU DeepSpeed's synchronize() is a no-op, so this
  differs from `timed` on GPUs only).
Prints the median step time of each and the ratios to the untimed one, as JSON.

`DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 bench/forward_timing.py` (or one process:
`DS_ACCELERATOR=cpu python bench/forward_timing.py`, which sets up a world of 1)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import deepspeed

from suite.config import ClusterConfig, SuiteConfig, TrainConfig
from suite.plan import plan_run
from suite.workload import device
from suite.workload.train import ForwardTimer, forward_timer, prepare, timed_loop


class Untimed(ForwardTimer):
    def time(self, run):
        return run()

    def end_step(self) -> None:
        pass

    def step_seconds(self):
        return []


class Synchronised(ForwardTimer):
    """What train.py did before: synchronise, clock, forward, synchronise, clock."""

    def time(self, run):
        device.synchronize()
        start = time.perf_counter()
        out = run()
        device.synchronize()
        self._steps.append(time.perf_counter() - start)
        return out

    def end_step(self) -> None:
        pass

    def step_seconds(self):
        return list(self._steps)


class Switch(ForwardTimer):
    """The timer prepare() is given; `use` picks which one times the next step."""

    def __init__(self, timers) -> None:
        super().__init__()
        self.timers, self.use = timers, next(iter(timers))

    def time(self, run):
        return self.timers[self.use].time(run)

    def end_step(self) -> None:
        self.timers[self.use].end_step()

    def step_seconds(self):
        return self.timers[self.use].step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300, help="steps per timer, interleaved")
    parser.add_argument("--accum", type=int, default=4, help="micro-batches per step")
    args = parser.parse_args()
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29571")):
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(auto_mpi_discovery=False)
    world = int(os.environ["WORLD_SIZE"])
    import torch

    # the threads a rank of the suite gets (suite/rank.py): more oversubscribe the cores
    torch.set_num_threads(device.threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world)), None,
                                                  cpu_count=os.cpu_count()))
    cfg = SuiteConfig(train=TrainConfig(micro_batch_size=1, global_batch_size=args.accum * world),
                      cluster=ClusterConfig(accelerator="cpu", cpu_ranks=world))
    plan = plan_run(cfg, local_gpus=0, check_memory=False)
    timers = {"untimed": Untimed(), "timed": forward_timer(plan.accelerator), "synchronised": Synchronised()}
    switch = Switch(timers)
    _, step_fn, _, _ = prepare(cfg, plan, timer=switch)
    for name in timers:  # warm-up of each
        switch.use = name
        timed_loop(step_fn, warmup=3, timed=0)
    steps = {name: [] for name in timers}
    order = list(timers)
    for i in range(args.rounds):
        for name in order[i % 3:] + order[:i % 3]:  # each timer first in a third of the rounds
            switch.use = name
            steps[name] += timed_loop(step_fn, warmup=0, timed=1)[0]
    if int(os.environ["RANK"]) == 0:
        median = {name: statistics.median(t) for name, t in steps.items()}
        print(json.dumps({"world": world, "micro_batches_per_step": plan.grad_accum_steps,
                          "steps_each": args.rounds,
                          "median_step_s": median,
                          "ratio_to_untimed": {n: median[n] / median["untimed"] for n in median},
                          "median_forward_s_timed": statistics.median(timers["timed"].step_seconds())},
                         indent=1))


if __name__ == "__main__":
    main()
