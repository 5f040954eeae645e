"""DeepSpeed-Ulysses gradient scale per ZeRO stage: the evidence behind the suite's 1/sp loss
scaling (suite/workload/train.py), and the check to rerun on a new DeepSpeed to see whether it
is still needed. Not a benchmark of the suite: a reproduction for an upstream report.

For ZeRO stages 0-3, the suite's GPT is trained 4 SGD steps (lr 1, no clipping) with Ulysses
over all ranks, once with the plain loss and once with the loss scaled by 1/sp, beside the same
model trained by hand with plain torch (DistributedAttention, gradients all-reduced and
averaged). Prints, per stage and scaling, the largest weight difference after the last step.
DeepSpeed 0.19.8 on 2 CPU ranks: stages 0-2 match only scaled, stage 3 only unscaled.

`DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 bench/ulysses_gradients.py`"""
from __future__ import annotations

import json
import os

import deepspeed
import deepspeed.runtime.sequence_parallel.parallel_state_sp as sp_state
import torch
import torch.distributed as dist

from suite.config import ModelConfig
from suite.models.gpt.model import gpt
from suite.workload.data import sequence_slice

SHAPE = ModelConfig(name="ulysses", n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64)
STEPS, BATCH = 4, 4


def max_weight_difference(stage: int, loss_scale: float) -> float:
    sp_state._release_sequence_parallel_groups()
    sp_state.initialize_sequence_parallel(dist.get_world_size())
    group, rank = sp_state.get_sequence_parallel_group(), dist.get_rank()
    config = {"train_batch_size": BATCH, "train_micro_batch_size_per_gpu": BATCH,
              "gradient_clipping": 0.0, "zero_optimization": {"stage": stage},
              "optimizer": {"type": "SGD", "params": {"lr": 1.0}}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=gpt(SHAPE, seed=0, sequence_group=group),
                                      config=config, mpu=sp_state)
    reference = gpt(SHAPE, seed=0, sequence_group=group)
    optimizer = torch.optim.SGD(reference.parameters(), lr=1.0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        tokens = torch.randint(0, SHAPE.vocab_size, (BATCH, SHAPE.seq_len + 1), generator=generator)
        mine = sequence_slice(tokens, rank, dist.get_world_size())
        reference(mine).backward()
        for p in reference.parameters():  # the mean loss over the slices: average the gradients
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
        optimizer.step()
        optimizer.zero_grad()
        engine.backward(engine(mine) * loss_scale)
        engine.step()
    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=stage == 3):
        return max((params[n].detach() - p.detach()).abs().max().item()
                   for n, p in reference.named_parameters())


def main() -> None:
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    sp = dist.get_world_size()
    rows = [{"zero_stage": stage, "loss_scale": scale, "max_weight_difference": max_weight_difference(stage, scale)}
            for stage in (0, 1, 2, 3) for scale in (1.0, 1.0 / sp)]
    if dist.get_rank() == 0:
        for row in rows:
            print(json.dumps(row), flush=True)
    dist.barrier()
    os._exit(0)  # skip gloo's racy teardown at interpreter exit (docs/behaviour.md)


if __name__ == "__main__":
    main()
