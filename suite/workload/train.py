"""The timed training loop, of DeepSpeed's engine or a PyTorch baseline's (torch_engine.py).
Expects torch.distributed's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) to be set already;
returns raw measurements, no formulas."""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import List, Optional

import deepspeed
import torch

from suite import models
from suite.config import SuiteConfig
from suite.models.layers import next_token_loss
from suite.plan import RunPlan
from suite.workload import device, telemetry
from suite.workload.data import global_batches, micro_batch, sequence_slice

# Distinct global batches the steps cycle through (made once, before timing).
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
    memory_capacity_bytes: Optional[int] = None               # per device (CPU: RAM / local ranks)
    comm_bytes_per_step: Optional[dict] = None                # op -> bytes (profile_comms)
    compiled_graphs: Optional[int] = None                     # train.compile: graphs Dynamo built
    graph_breaks: Optional[int] = None                        # ... and where it had to break
    telemetry: Optional[dict] = None                          # GPUs' energy, power, clocks (NVML)
    moe: Optional[dict] = None                                # mixture of experts: routing figures
                                                              # over the timed steps (_moe_metrics)
    per_rank: List[dict] = field(default_factory=list)        # rank order: see _own_summary


def _reset_peak_memory(accelerator: str) -> None:
    if accelerator == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # "5" resets the process's peak RSS (Linux); without it ru_maxrss counts init too
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _memory_capacity(accelerator: str) -> int:
    if accelerator == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // local_ranks


def _comm_bytes_per_step(steps: int) -> dict:
    """Bytes each collective moved per step by DeepSpeed's comms logger (message sizes and
    counts only: its latencies are cumulative, docs/behaviour.md)."""
    raw = deepspeed.comm.comms_logger.get_raw_data() if hasattr(deepspeed.comm, "comms_logger") else {}
    return {op: sum(size * entry[0] for size, entry in sizes.items()) / steps
            for op, sizes in raw.items()}


# Test-only: seconds added to every timed step, to show that a slower night is caught as a
# regression. An environment variable, not a config field, so the configuration (and its
# hash) stays the same; records list it among their environment variables.
SLOWDOWN_VARIABLE = "SUITE_TEST_SLOWDOWN_S"


def _peak_memory(accelerator: str) -> tuple[int, Optional[int]]:
    if accelerator == "cuda":
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


def _fault(step: int, cfg: SuiteConfig, rank: int) -> None:
    if step != cfg.train.fault_step or cfg.train.fault_rank not in (None, rank):
        return
    if cfg.train.fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.train.fault == "hang":
        print(f"injected fault: train.fault=hang at step {step}: rank {rank} stops here", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    if cfg.train.fault == "raise":
        raise InjectedFault(f"injected fault: train.fault=raise at step {step}")
    if cfg.train.fault == "oom":
        raise torch.OutOfMemoryError(
            f"injected fault: train.fault=oom at step {step} (simulated CUDA out of memory)")


def _own_summary(times: List[float], forward_times: List[float], peak: int) -> dict:
    """This rank's own figures over the timed steps. Step times are nearly equal on every rank
    (a step ends in collectives that wait for the slowest); the forward pass is where a rank's
    own speed shows under data parallelism (docs/runs-and-metrics.md, "Per-rank figures")."""
    spread = (statistics.pstdev(forward_times) / statistics.mean(forward_times)
              if len(forward_times) > 1 and statistics.mean(forward_times) > 0 else None)
    return {"host": socket.gethostname(), "step_time_s": statistics.median(times),
            "forward_time_s": statistics.median(forward_times) if forward_times else None,
            "forward_time_cv": spread, "forward_times_s": [float(t) for t in forward_times],
            "peak_memory_bytes": peak}


class ForwardTimer:
    """Seconds of each step's forward passes, per rank (the straggler table's figure): time(run)
    runs one micro-batch's forward pass and times it, end_step() closes a step's entry, and
    step_seconds() returns every closed step's forward seconds, to be read after the timed
    loop's final synchronisation. `stretch` (train.fault=slow) sleeps that fraction of each
    forward pass's time more, counted in it. Made by forward_timer(accelerator)."""

    def __init__(self, stretch: float = 0.0) -> None:
        self.stretch = stretch
        self._steps: List = []

    def time(self, run):
        raise NotImplementedError

    def end_step(self) -> None:
        raise NotImplementedError

    def step_seconds(self) -> List[float]:
        raise NotImplementedError


class CpuForwardTimer(ForwardTimer):
    """perf_counter around the call, nothing else: the CPU runs each op as it is called (its
    accelerator's synchronize() is a no-op), so the clock sees the whole pass."""

    def __init__(self, stretch: float = 0.0) -> None:
        super().__init__(stretch)
        self._seconds = 0.0

    def time(self, run):
        start = time.perf_counter()
        out = run()
        if self.stretch:
            time.sleep(self.stretch * (time.perf_counter() - start))
        self._seconds += time.perf_counter() - start
        return out

    def end_step(self) -> None:
        self._steps.append(self._seconds)
        self._seconds = 0.0

    def step_seconds(self) -> List[float]:
        return list(self._steps)


class CudaForwardTimer(ForwardTimer):
    """CUDA events recorded on the stream before and after each forward pass; nothing waits for
    them until step_seconds(), after the timed loop's final synchronisation, so the launch queue
    is never drained between micro-batches (synchronising around each forward pass, as the
    suite did, drained it twice per micro-batch and exposed the launch latency in the step
    time). `event()` makes a timing event (torch.cuda.Event(enable_timing=True); a test passes
    a fake). train.fault=slow waits for its own forward pass's end event to know how long to
    sleep: that fault's rank is meant to be slow."""

    def __init__(self, stretch: float = 0.0, event=None) -> None:
        super().__init__(stretch)
        self._event = event or (lambda: torch.cuda.Event(enable_timing=True))
        self._pairs: List = []
        self._slept = 0.0

    def time(self, run):
        start, end = self._event(), self._event()
        start.record()
        out = run()
        end.record()
        self._pairs.append((start, end))
        if self.stretch:
            end.synchronize()
            slept = self.stretch * start.elapsed_time(end) / 1e3
            time.sleep(slept)
            self._slept += slept
        return out

    def end_step(self) -> None:
        self._steps.append((self._pairs, self._slept))
        self._pairs, self._slept = [], 0.0

    def step_seconds(self) -> List[float]:
        """elapsed_time is in milliseconds; the events must have completed (they have, after
        the step's final synchronize)."""
        return [sum(start.elapsed_time(end) for start, end in pairs) / 1e3 + slept
                for pairs, slept in self._steps]


def forward_timer(accelerator: str, stretch: float = 0.0) -> ForwardTimer:
    """The forward-pass timer of the run's accelerator."""
    return CudaForwardTimer(stretch) if accelerator == "cuda" else CpuForwardTimer(stretch)


def micro_batch_steps(engine, batches, timer: ForwardTimer, poison, backward_scale: float = 1.0
                      ) -> torch.Tensor:
    """One optimizer step of DeepSpeed's engine (or the torch baselines'), micro-batch by
    micro-batch: forward (timed by `timer`), backward, engine.step(); the mean loss, on the
    device. Nothing here waits for the device."""
    losses = []
    for batch in batches:
        loss = timer.time(lambda: poison(engine(batch)))
        engine.backward(loss * backward_scale if backward_scale != 1.0 else loss)
        engine.step()
        losses.append(loss.detach())
    timer.end_step()
    return torch.stack(losses).mean()


class _Poison:
    """train.fault=nan: multiplies the loss by NaN during the fault step."""

    def __init__(self) -> None:
        self.active = False

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if self.active else loss


def _checkpoint_function(cfg: SuiteConfig, plan: RunPlan):
    mode = cfg.train.activation_checkpointing
    if mode == "none":
        return None
    if mode == "full":
        from torch.utils.checkpoint import checkpoint

        return lambda block, x: checkpoint(block, x, use_reentrant=False)
    deepspeed.checkpointing.configure(None, deepspeed_config=checkpointing_config(plan))
    return lambda block, x: deepspeed.checkpointing.checkpoint(block, x)


def checkpointing_config(plan: RunPlan) -> dict:
    """The config DeepSpeed's activation checkpointing is configured from. Without an mpu it
    checks the batch against every rank as if all were data parallel; under Ulysses that fails
    (train_batch_size 2 != 2 x 1 x 2 on 2 ranks of sp2), so the sequence-parallel degree goes
    in under DeepSpeed's own key for mpu-less configs, `sequence_parallel_size`
    (runtime/config.py: world size / sequence_parallel_size)."""
    if plan.sequence_parallel == 1:
        return plan.ds_config
    return {**plan.ds_config, "sequence_parallel_size": plan.sequence_parallel}


def _sequence_parallel_state(plan: RunPlan):
    """DeepSpeed's Ulysses process groups (its parallel_state_sp, passed to the engine as mpu):
    consecutive ranks share a sample's sequence; gradients and ZeRO span all ranks. None
    without sequence parallelism."""
    if plan.sequence_parallel == 1:
        return None
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as sp_state

    sp_state.initialize_sequence_parallel(plan.sequence_parallel)
    return sp_state


def _build(cfg: SuiteConfig, plan: RunPlan, poison: _Poison, sp_state):
    """The model of cfg.model's family: one module, or a PipelineModule of its layers."""
    m, s = cfg.model, cfg.strategy
    family = models.family(m.family)
    if plan.pipeline_parallel > 1:
        from deepspeed.pipe import PipelineModule

        # the stages are built on the CPU (DeepSpeed moves them): their weights are drawn on the
        # CPU, as every layout's are (suite.models.layers.initial_weight), so they equal ddp's
        return PipelineModule(
            layers=family.pipeline_layers(m, cfg.train.seed), num_stages=plan.pipeline_parallel,
            loss_fn=lambda logits, targets: poison(next_token_loss(logits, targets)),
            partition_method=s.pipeline_partition_method,
            activation_checkpoint_interval=0 if cfg.train.activation_checkpointing == "none" else 1,
            # only blocks: the embedding's input is token ids, which have no gradient
            checkpointable_layers=family.CHECKPOINTABLE_LAYERS)
    group = None if sp_state is None else sp_state.get_sequence_parallel_group()
    shard_group = None if sp_state is None else sp_state.get_sequence_data_parallel_group()
    with _build_context(plan, s, sp_state, shard_group):
        return family.build(m, cfg.train.seed, checkpoint=_checkpoint_function(cfg, plan),
                            sequence_group=group, expert_parallel=s.expert_parallel)


def optimizer_parameters(model: torch.nn.Module):
    """What deepspeed.initialize's optimizer is built from: the trainable parameters, or for a
    mixture of experts DeepSpeed's MoE parameter groups (one group of the dense parameters, one
    per expert group marked `moe`: split_params_into_different_moe_groups_for_optimizer), which
    ZeRO 1-2 need to reduce and partition the expert parameters over their expert-data-parallel
    group instead of every rank (runtime/zero/stage_1_and_2.py _configure_moe_settings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    from deepspeed.moe.utils import is_moe_param, split_params_into_different_moe_groups_for_optimizer

    if not any(is_moe_param(p) for p in params):
        return params
    return split_params_into_different_moe_groups_for_optimizer({"params": params, "name": "dense"})


def _build_context(plan: RunPlan, strategy, sp_state, shard_group):
    if strategy.zero_stage == 3:  # built already partitioned
        return deepspeed.zero.Init(config_dict_or_path=plan.ds_config, mpu=sp_state,
                                   data_parallel_group=shard_group)
    if plan.accelerator == "cuda":
        # straight onto the GPU: no full fp32 copy per rank in host memory, and a 2.7B model is
        # built in seconds instead of a minute of CPU initialisation
        return torch.device(device.current_device())
    return contextlib.nullcontext()


def _data_parallel_rank(engine, plan: RunPlan, rank: int) -> int:
    if plan.sequence_parallel > 1:  # parallel_state_sp groups consecutive ranks into a replica
        return rank // plan.sequence_parallel
    if plan.pipeline_parallel > 1:
        return engine.grid.get_data_parallel_rank()
    if plan.tensor_parallel > 1:
        from deepspeed.utils import groups

        return groups._get_data_parallel_rank()
    return rank


def prepare(cfg: SuiteConfig, plan: RunPlan, timer: Optional[ForwardTimer] = None):
    """The engine, the step function (one optimizer step -> its mean loss, on the device), this
    replica's micro-batches and the forward timer (`timer`, else the accelerator's:
    forward_timer), which has each step's forward seconds once the loop is over (none under
    pipeline parallelism, whose engine runs forward and backward as one schedule); everything
    before the timed loop."""
    rank = int(os.environ.get("RANK", 0))
    poison = _Poison()
    if plan.engine != "deepspeed":
        # a PyTorch baseline (torch DDP, FSDP2) behind DeepSpeed's engine interface, so that
        # both are timed by the same step function below (suite/workload/torch_engine.py)
        from suite.workload import torch_engine

        sp_state = None
        engine = torch_engine.build(cfg, plan, _checkpoint_function(cfg, plan))
    else:
        sp_state = _sequence_parallel_state(plan)
        model = _build(cfg, plan, poison, sp_state)
        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=optimizer_parameters(model), config=plan.ds_config,
            mpu=sp_state)
    if cfg.train.compile:
        engine.compile()  # inductor; the graph is built in the first (untimed) warm-up step
    m = cfg.model
    dp_rank = _data_parallel_rank(engine, plan, rank)
    sp = plan.sequence_parallel
    sp_rank = sp_state.get_sequence_parallel_rank() if sp > 1 else 0

    def share(batch: torch.Tensor, i: int) -> torch.Tensor:
        """This rank's part of micro-batch i: its replica's samples, its slice of the sequence."""
        mine = micro_batch(batch, i, dp_rank, plan.data_parallel_size, plan.micro_batch_size)
        return mine if sp == 1 else sequence_slice(mine, sp_rank, sp)

    # DeepSpeed 0.19.8 with Ulysses sums the gradients over a replica's sequence-parallel ranks
    # under ZeRO 0-2 (sp times the gradient of the mean loss) and averages them under ZeRO-3
    # (measured: docs/layouts.md); scaling the loss given to backward by 1/sp under
    # stages 0-2 makes every stage train the data-parallel model. Reported losses are unscaled.
    backward_scale = 1.0 / sp if sp > 1 and cfg.strategy.zero_stage < 3 else 1.0

    pool = global_batches(DATA_POOL, plan.global_batch_size, m.seq_len, m.vocab_size,
                          seed=cfg.train.seed + 1, device=engine.device)
    micro = [[share(batch, i) for i in range(plan.grad_accum_steps)] for batch in pool]
    if cfg.data.name == "tokens":  # read from disk inside the timed steps, as training would
        from suite.workload.data import token_loader

        loader = iter(token_loader(
            cfg.data.path, cfg.data.token_dtype, cfg.data.workers, m.seq_len, m.vocab_size,
            cfg.train.warmup_steps + cfg.train.timed_steps, plan.global_batch_size,
            plan.micro_batch_size, plan.grad_accum_steps, dp_rank, plan.data_parallel_size,
            pin_memory=plan.accelerator == "cuda"))

    slowed = cfg.train.fault == "slow" and cfg.train.fault_rank in (None, rank)
    if timer is None:  # train.fault=slow stretches the slowed rank's forward passes
        timer = forward_timer(plan.accelerator, cfg.train.fault_slowdown if slowed else 0.0)

    def step_fn(step: int) -> torch.Tensor:
        _fault(step, cfg, rank)
        poison.active = (cfg.train.fault == "nan" and step == cfg.train.fault_step
                         and cfg.train.fault_rank in (None, rank))
        if cfg.data.name == "tokens":
            batches = [next(loader).to(engine.device, non_blocking=True) for _ in range(plan.grad_accum_steps)]
            if sp > 1:
                batches = [sequence_slice(b, sp_rank, sp) for b in batches]
        else:
            batches = micro[step % DATA_POOL]
        if plan.pipeline_parallel > 1:
            return engine.train_batch(iter([(b[:, :-1], b[:, 1:]) for b in batches]))
        return micro_batch_steps(engine, batches, timer, poison, backward_scale)

    return engine, step_fn, micro, timer


def timed_loop(step_fn, warmup: int, timed: int, beat=lambda step: None, slowdown: float = 0.0,
               on_timed_start=lambda: None):
    """Warm-up steps untimed, then each timed step bracketed by device synchronisation.
    `on_timed_start` runs once, synchronised, before the first timed step (telemetry starts).
    Returns (seconds per timed step, every step's loss as a device tensor)."""
    losses, times = [], []
    for step in range(warmup + timed):
        device.synchronize()
        if step == warmup:
            on_timed_start()
        start = time.perf_counter()
        losses.append(step_fn(step).detach().float())
        if slowdown:
            time.sleep(slowdown)
        device.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
        beat(step)
    return times, losses


def _moe_metrics(engine, plan: RunPlan, timed_forwards: int) -> Optional[dict]:
    """A mixture of experts' routing figures over the timed steps' forward passes (the last
    `timed_forwards` of each rank's log), every rank's counts summed
    (suite.models.moe_layer.routing_summary: moe_dropped_fraction, moe_expert_load,
    moe_expert_load_max, moe_aux_loss). None for a dense model. A collective: every rank calls it."""
    log = getattr(getattr(engine, "module", None), "routing_log", None)
    if not log:
        return None
    from suite.models.moe_layer import routing_summary

    counts = torch.stack(log[-timed_forwards:]).double()
    deepspeed.comm.all_reduce(counts, op=deepspeed.comm.ReduceOp.SUM)
    return routing_summary(counts.cpu(), ranks=plan.world_size)


def run_training(cfg: SuiteConfig, plan: RunPlan, beat=lambda step: None,
                 ready=lambda: None) -> Measurements:
    """Train and time; `ready()` is called once the engine is built and `beat(step)` as each
    step completes (the hang watchdog)."""
    out = Measurements()
    t_init = time.perf_counter()
    engine, step_fn, _, timer = prepare(cfg, plan)
    out.device_name = device.device_name(plan.accelerator)
    out.memory_capacity_bytes = _memory_capacity(plan.accelerator)
    device.synchronize()
    out.init_s = time.perf_counter() - t_init

    ready()
    _reset_peak_memory(plan.accelerator)
    if cfg.train.profile_comms and hasattr(deepspeed.comm, "comms_logger"):
        deepspeed.comm.comms_logger.comms_dict.clear()  # count the steps, not initialisation
    sensor = telemetry.start_telemetry(plan.accelerator, torch.cuda.current_device()) \
        if plan.accelerator == "cuda" else None
    times, step_losses = timed_loop(step_fn, cfg.train.warmup_steps, cfg.train.timed_steps, beat,
                                    float(os.environ.get(SLOWDOWN_VARIABLE, 0) or 0),
                                    on_timed_start=sensor.start if sensor else lambda: None)
    own_telemetry = sensor.stop() if sensor else None
    forward_times = timer.step_seconds()  # after the last step's synchronisation
    total = cfg.train.warmup_steps + cfg.train.timed_steps

    # Collectives after timing: a step lasts as long as its slowest rank; losses are averaged.
    peak, reserved = _peak_memory(plan.accelerator)
    engine_device = engine.device
    times_t = torch.tensor(times, dtype=torch.float64, device=engine_device)
    memory_t = torch.tensor([peak, reserved or 0], dtype=torch.float64, device=engine_device)
    losses_t = torch.stack(step_losses).double() / plan.world_size
    deepspeed.comm.all_reduce(times_t, op=deepspeed.comm.ReduceOp.MAX)
    deepspeed.comm.all_reduce(memory_t, op=deepspeed.comm.ReduceOp.MAX)
    deepspeed.comm.all_reduce(losses_t, op=deepspeed.comm.ReduceOp.SUM)
    out.step_times_s = times_t.tolist()
    out.losses = losses_t.tolist()
    out.peak_memory_bytes = int(memory_t[0].item())
    out.peak_memory_reserved_bytes = int(memory_t[1].item()) if reserved is not None else None
    own = {"telemetry": own_telemetry,
           "rank": _own_summary(times, forward_times[-len(times):] if forward_times else [], peak)}
    every_rank: list = [None] * plan.world_size
    torch.distributed.all_gather_object(every_rank, own)
    out.telemetry = telemetry.combine_ranks([r["telemetry"] for r in every_rank])
    out.per_rank = [r["rank"] for r in every_rank]
    if cfg.train.profile_comms:
        out.comm_bytes_per_step = _comm_bytes_per_step(total)
    out.moe = _moe_metrics(engine, plan, cfg.train.timed_steps * plan.grad_accum_steps)
    if cfg.train.compile:  # evidence that compilation happened, and how whole the graph is
        from torch._dynamo.utils import counters

        out.compiled_graphs = int(counters["stats"]["unique_graphs"])
        out.graph_breaks = int(sum(counters["graph_break"].values()))
    return out
