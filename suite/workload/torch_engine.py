"""PyTorch baselines: the suite's model, data and optimizer step trained by torch's own
DistributedDataParallel (strategy.engine=torch_ddp) or FSDP2's fully_shard (fsdp2) instead of
DeepSpeed's engine, so that ZeRO-0 can be compared with torch DDP and ZeRO-3 with FSDP2 on the
same hardware, in the same sweep, timed by the same loop.

TorchEngine has the part of DeepSpeed's engine interface that the training loop uses
(`engine(batch)`, `engine.backward(loss)`, `engine.step()`, `engine.device`) with DeepSpeed's
semantics, so suite/workload/train.py runs both through one step function. Everything it
builds is read from the plan's torch_config (suite/plan.py), which the run folder keeps.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from suite import models
from suite.config import SuiteConfig
from suite.plan import RunPlan
from suite.workload import device

_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _resolve(dotted: str) -> Any:
    """A class from its dotted name in torch_config (torch.optim.AdamW, deepspeed.runtime...)."""
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


class TorchEngine:
    """A model wrapped by DDP or FSDP2 with its optimizer and learning-rate schedule, stepping as
    DeepSpeed's engine steps: backward() scales each micro-batch's loss by 1 / accumulation
    steps (DeepSpeed's engine.backward does), step() counts micro-batches and at the last one of
    a global batch clips, steps the optimizer, zeroes the gradients and steps the schedule, in
    DeepSpeed's order (_take_model_step). Gradients are reduced only in the last micro-batch's
    backward, as DeepSpeed reduces them only at the accumulation boundary."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 config: Dict[str, Any], device_: torch.device) -> None:
        self.module, self.optimizer, self.lr_scheduler = module, optimizer, scheduler
        self.config, self.device = config, device_
        self.accum = config["gradient_accumulation_steps"]
        self.clip = config["gradient_clipping"]
        self.micro_steps = 0
        autocast = config.get("autocast")
        self._autocast = (lambda: torch.autocast(device_.type, dtype=_DTYPES[autocast["dtype"]])) \
            if autocast else contextlib.nullcontext
        self._no_sync: Optional[contextlib.AbstractContextManager] = None

    def _last_micro_batch(self) -> bool:
        return (self.micro_steps + 1) % self.accum == 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """The mean next-token loss of the micro-batch (unscaled, as DeepSpeed's engine returns it)."""
        sync = self._last_micro_batch()
        if self.config["engine"] == "fsdp2":
            self.module.set_requires_gradient_sync(sync)
        elif not sync:
            # DDP reads its sync flag in forward (it prepares the reducer there), so no_sync()
            # must span forward and backward; this interface splits them as DeepSpeed's does, so
            # the context opens here and closes in backward()
            self._no_sync = self.module.no_sync()
            self._no_sync.__enter__()
        with self._autocast():  # DDP in bf16 only: autocast casts per op, weights stay fp32
            return self.module(batch)

    def backward(self, loss: torch.Tensor) -> None:
        try:
            (loss / self.accum if self.accum > 1 else loss).backward()
        finally:
            if self._no_sync is not None:
                self._no_sync.__exit__(None, None, None)
                self._no_sync = None

    def step(self) -> None:
        boundary = self._last_micro_batch()
        self.micro_steps += 1
        if not boundary:
            return
        if self.clip > 0:  # on FSDP2's DTensor gradients the norm is the whole model's
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()


def _wrap(model: nn.Module, config: Dict[str, Any], plan: RunPlan, dev: torch.device) -> nn.Module:
    if config["engine"] == "torch_ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                       **config["ddp"])
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    fsdp = config["fsdp2"]
    # the plan's device, not torch's guess: a CPU run on a machine with GPUs stays on the CPU
    mesh = init_device_mesh(plan.accelerator, (plan.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=_DTYPES[fsdp["mp_policy"]["param_dtype"]],
                                  reduce_dtype=_DTYPES[fsdp["mp_policy"]["reduce_dtype"]])
    # one unit per block (its parameters gathered just before it runs, freed after), then the
    # root: the embedding, the final norm and the head (tied or not) form the last unit
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=fsdp["reshard_after_forward"])
    return fully_shard(model, mesh=mesh, mp_policy=policy,
                       reshard_after_forward=fsdp["reshard_after_forward"])


def _materialise_shards(module: nn.Module, dev: torch.device) -> None:
    """FSDP2's model was built on the meta device and sharded there: give each rank's shards
    storage on the device (to_empty) and the plain model's values (layers.reset_parameters),
    each whole parameter drawn on the CPU from its own stream, one at a time, and only this
    rank's shard of it copied (distribute_tensor with src_data_rank=None: every rank draws the
    same tensor, so nothing is sent)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    from suite.models.layers import reset_parameters, to_empty

    to_empty(module, dev)

    def fill(param: torch.Tensor, full: torch.Tensor) -> None:
        if isinstance(param, DTensor):
            shard = distribute_tensor(full.to(param.dtype), param.device_mesh, param.placements,
                                      src_data_rank=None)
            param.to_local().copy_(shard.to_local())
        else:
            param.copy_(full)

    reset_parameters(module, fill)


def build(cfg: SuiteConfig, plan: RunPlan, checkpoint: Optional[Callable]) -> TorchEngine:
    """The plain model of cfg.model's family (initialised from its parameter names, as every
    DeepSpeed layout is, so both start from identical weights), wrapped as plan.torch_config
    says, with its optimizer and schedule. torch DDP: built whole on the device. FSDP2: built on
    the meta device (no storage), sharded by fully_shard there, then only this rank's shards are
    made on the device and initialised (_materialise_shards): no rank ever holds the whole model,
    the host holds one whole parameter at a time."""
    config = plan.torch_config
    dev = torch.device(device.current_device())
    family = models.family(cfg.model.family)
    if config["engine"] == "fsdp2":
        from suite.models.layers import deferred_initialisation

        with torch.device("meta"), deferred_initialisation():
            model = family.build(cfg.model, cfg.train.seed, checkpoint=checkpoint, sequence_group=None)
        module = _wrap(model, config, plan, dev)
        _materialise_shards(module, dev)
    else:
        with dev if plan.accelerator == "cuda" else contextlib.nullcontext():
            model = family.build(cfg.model, cfg.train.seed, checkpoint=checkpoint, sequence_group=None)
        module = _wrap(model, config, plan, dev)
    optimizer = _resolve(config["optimizer"]["class"])(
        [p for p in module.parameters() if p.requires_grad], **config["optimizer"]["params"])
    scheduler = None
    if config["lr_scheduler"] is not None:  # DeepSpeed's own classes: its schedule exactly
        scheduler = _resolve(config["lr_scheduler"]["class"])(optimizer, **config["lr_scheduler"]["params"])
    return TorchEngine(module, optimizer, scheduler, config, dev)
