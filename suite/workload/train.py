"""The timed DeepSpeed training loop. Expects torch.distributed's environment (RANK,
WORLD_SIZE, MASTER_ADDR, ...) to be set already; returns raw measurements, no formulas."""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import List, Optional

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator

from suite.config import SuiteConfig
from suite.plan import RunPlan
from suite.workload.model import GPT, synthetic_batches

# Distinct micro-batches each rank cycles through (made once, before timing).
DATA_POOL = 4


class InjectedFault(RuntimeError):
    """Raised by train.fault=raise; a test-only way to make a run fail inside a step."""


@dataclass
class Measurements:
    step_times_s: List[float] = field(default_factory=list)  # slowest rank's time per timed step
    losses: List[float] = field(default_factory=list)         # mean over ranks, every step
    peak_memory_bytes: Optional[int] = None                   # max over ranks
    peak_memory_reserved_bytes: Optional[int] = None          # CUDA only
    init_s: float = 0.0                                       # deepspeed.initialize and set-up
    device_name: Optional[str] = None


def _reset_peak_memory(accelerator: str) -> None:
    if accelerator == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # "5" resets the process's peak RSS (Linux); without it ru_maxrss counts init too
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _peak_memory(accelerator: str) -> tuple[int, Optional[int]]:
    if accelerator == "cuda":
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


def _one_step(engine, batches, step: int, grad_accum: int, fault: str, fault_step: int):
    """One optimizer step = grad_accum micro-batches; returns the losses as device tensors."""
    losses = []
    for micro in range(grad_accum):
        if step == fault_step and fault == "raise":
            raise InjectedFault(f"injected fault: train.fault=raise at step {step}")
        if step == fault_step and fault == "oom":
            raise torch.OutOfMemoryError(
                f"injected fault: train.fault=oom at step {step} (simulated CUDA out of memory)")
        loss = engine(batches[(step * grad_accum + micro) % len(batches)])
        if step == fault_step and fault == "nan":
            loss = loss * float("nan")
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach())
    return losses


def run_training(cfg: SuiteConfig, plan: RunPlan) -> Measurements:
    out = Measurements()
    accel = get_accelerator()
    rank = int(os.environ.get("RANK", 0))
    t_init = time.perf_counter()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    m = cfg.model
    with deepspeed.zero.Init(config_dict_or_path=plan.ds_config,
                             enabled=cfg.strategy.zero_stage == 3):
        model = GPT(m.n_layers, m.d_model, m.n_heads, m.seq_len, m.vocab_size)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=plan.ds_config)
    device = engine.device
    batches = synthetic_batches(DATA_POOL, plan.micro_batch_size, m.seq_len, m.vocab_size,
                                seed=cfg.train.seed + 1000 * rank, device=device)
    out.device_name = accel.get_device_name() if plan.accelerator == "cuda" else None
    accel.synchronize()
    out.init_s = time.perf_counter() - t_init

    _reset_peak_memory(plan.accelerator)
    step_losses = []
    times = []
    total = cfg.train.warmup_steps + cfg.train.timed_steps
    for step in range(total):
        accel.synchronize()
        start = time.perf_counter()
        step_losses.append(torch.stack(_one_step(engine, batches, step, plan.grad_accum_steps,
                                                 cfg.train.fault, cfg.train.fault_step)).mean())
        accel.synchronize()
        if step >= cfg.train.warmup_steps:
            times.append(time.perf_counter() - start)

    # Collectives after timing: a step lasts as long as its slowest rank; losses are averaged.
    peak, reserved = _peak_memory(plan.accelerator)
    times_t = torch.tensor(times, dtype=torch.float64, device=device)
    memory_t = torch.tensor([peak, reserved or 0], dtype=torch.float64, device=device)
    losses_t = torch.stack(step_losses).double() / plan.world_size
    deepspeed.comm.all_reduce(times_t, op=deepspeed.comm.ReduceOp.MAX)
    deepspeed.comm.all_reduce(memory_t, op=deepspeed.comm.ReduceOp.MAX)
    deepspeed.comm.all_reduce(losses_t, op=deepspeed.comm.ReduceOp.SUM)
    out.step_times_s = times_t.tolist()
    out.losses = losses_t.tolist()
    out.peak_memory_bytes = int(memory_t[0].item())
    out.peak_memory_reserved_bytes = int(memory_t[1].item()) if reserved is not None else None
    return out

