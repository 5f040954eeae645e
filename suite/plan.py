"""Pure planning: turn one composed config into a RunPlan (world size, batch math, the
DeepSpeed config dict, the resources to ask for), refusing combinations that cannot run.

Nothing here touches processes, files or devices, so tests call it directly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from suite import models
from suite.config import OPTIMIZERS, ConfigError, SuiteConfig
from suite.plain_config import from_dict

# Optimizers DeepSpeed can run on the CPU side under ZeRO-Offload (DeepSpeedCPUAdam/Adagrad).
OFFLOADABLE_OPTIMIZERS = ("adam", "adamw", "adagrad")


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs to know before it starts, derived from its config."""

    accelerator: str  # "cpu" or "cuda"
    precision: str    # fp32, bf16 or fp16 (precision=auto resolved: bf16 on GPUs, fp32 on CPUs)
    nodes: int
    ranks_per_node: int
    world_size: int
    data_parallel_size: int
    tensor_parallel: int
    pipeline_parallel: int
    sequence_parallel: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    ds_config: Dict[str, Any]  # {} for a PyTorch baseline (strategy.engine torch_ddp, fsdp2)
    #: DeepSpeed ops this run compiles on first use unless DeepSpeed was installed with them
    #: prebuilt: (op name, the config field that asks for it)
    compiled_ops: Tuple[Tuple[str, str], ...] = ()
    #: a PyTorch baseline's engine as suite/workload/torch_engine.py builds it (torch_config());
    #: {} for DeepSpeed runs, and in plans shipped before the baselines existed
    torch_config: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunPlan":
        """The plan as the launcher shipped it (submission.json)."""
        return cls(**{**data, "compiled_ops": tuple(tuple(op) for op in data.get("compiled_ops", ()))})

    @property
    def engine(self) -> str:
        """deepspeed, torch_ddp or fsdp2 (strategy.engine)."""
        return self.torch_config.get("engine", "deepspeed")

    @property
    def sharding_size(self) -> int:
        """Ranks holding the same parameters, over which gradients are reduced and ZeRO shards:
        data parallel x sequence parallel (a replica's Ulysses ranks share its weights)."""
        return self.data_parallel_size * self.sequence_parallel


def to_object(cfg: DictConfig | SuiteConfig | dict) -> SuiteConfig:
    """The typed config (from a composed DictConfig or its plain-dict form); unknown keys,
    wrong types and out-of-range values are refused, naming the field."""
    if isinstance(cfg, SuiteConfig):
        return cfg
    if isinstance(cfg, DictConfig):  # node by node: Hydra's own node does not resolve outside a run
        cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
               for k in cfg if k != "hydra"}
    return from_dict(SuiteConfig, {k: v for k, v in cfg.items() if k != "hydra"})


def resolve_precision(requested: str, accelerator: str) -> str:
    if requested == "auto":
        return "bf16" if accelerator == "cuda" else "fp32"
    return requested


def needs_local_gpus(cfg: SuiteConfig) -> bool:
    """Whether planning this run reads the submitting machine's GPU count (importing torch to
    count them costs ~2 s, so the launcher asks only when a run leaves it open)."""
    c = cfg.cluster
    return c.accelerator == "auto" or (c.accelerator == "cuda" and c.gpus_per_node is None)


def resolve_accelerator(requested: str, local_gpus: int) -> str:
    if requested == "auto":
        return "cuda" if local_gpus > 0 else "cpu"
    return requested


def ranks_per_node(cfg: SuiteConfig, accelerator: str, local_gpus: int) -> int:
    """Ranks on each node: the configured GPUs per node, else all local GPUs, else cpu_ranks."""
    if cfg.cluster.gpus_per_node is not None:
        return cfg.cluster.gpus_per_node
    if accelerator == "cuda" and local_gpus > 0:
        return local_gpus
    if accelerator == "cuda":
        raise ConfigError("cluster.gpus_per_node must be set when the GPUs are not on this machine")
    return cfg.cluster.cpu_ranks


def batch_sizes(micro: int, accum: Optional[int], global_batch: Optional[int], dp: int
                ) -> tuple[int, int, int]:
    """(micro, accumulation, global) with global = micro x accumulation x data-parallel size;
    accumulation is derived from a set global batch when it is not given."""
    if accum is None and global_batch is not None:
        if global_batch % (micro * dp):
            raise ConfigError(
                f"train.global_batch_size={global_batch} is not a multiple of "
                f"train.micro_batch_size={micro} x data-parallel size {dp} = {micro * dp}")
        accum = global_batch // (micro * dp)
    accum = 1 if accum is None else accum
    product = micro * accum * dp
    if global_batch is not None and global_batch != product:
        raise ConfigError(
            f"train.global_batch_size={global_batch} must equal train.micro_batch_size={micro} x "
            f"train.grad_accum_steps={accum} x data-parallel size {dp} = {product}"
        )
    return micro, accum, product


def check_layout(cfg: SuiteConfig, world: int) -> None:
    """Refuse parallel layouts that cannot be built, naming the fields."""
    s, m = cfg.strategy, cfg.model
    tp, pp, sp = s.tensor_parallel, s.pipeline_parallel, s.sequence_parallel
    if world % (tp * pp * sp):
        raise ConfigError(f"world size {world} (cluster.nodes x ranks per node) is not divisible by "
                          f"strategy.tensor_parallel={tp} x strategy.pipeline_parallel={pp} x "
                          f"strategy.sequence_parallel={sp}")
    models.family(m.family).check_layout(m, tp, sp, pp)
    if sp > 1 and (tp > 1 or pp > 1):
        raise ConfigError(f"strategy.sequence_parallel={sp} with strategy.tensor_parallel={tp} / "
                          f"strategy.pipeline_parallel={pp}: this suite runs DeepSpeed-Ulysses with "
                          "data parallel and ZeRO only (DeepSpeed's Ulysses groups and its AutoTP "
                          "and pipeline groups are separate mechanisms)")
    if pp > m.n_layers:
        raise ConfigError(f"strategy.pipeline_parallel={pp} exceeds model.n_layers={m.n_layers}: "
                          "every stage needs at least one block")
    if pp > 1 and s.zero_stage >= 2:
        raise ConfigError(f"strategy.pipeline_parallel={pp} cannot run with strategy.zero_stage="
                          f"{s.zero_stage}: DeepSpeed's pipeline engine allows ZeRO stage 0 or 1 only")
    if pp > 1 and tp > 1:
        raise ConfigError(f"strategy.pipeline_parallel={pp} with strategy.tensor_parallel={tp}: "
                          "DeepSpeed's AutoTP training does not combine with its pipeline engine")
    if (pp > 1 or tp > 1) and (s.offload_optimizer or s.offload_params):
        raise ConfigError("ZeRO-Offload (strategy.offload_optimizer/offload_params) is not offered "
                          "with strategy.pipeline_parallel or strategy.tensor_parallel > 1")
    zero_pp = s.zero_quantized_weights or s.zero_quantized_gradients or s.zero_hpz_partition_size > 1
    if zero_pp and s.zero_stage != 3:
        raise ConfigError("ZeRO++ (strategy.zero_quantized_weights, zero_quantized_gradients, "
                          "zero_hpz_partition_size) need "
                          f"strategy.zero_stage=3, not {s.zero_stage}")
    if cfg.train.compile and pp > 1:
        raise ConfigError(f"train.compile=true with strategy.pipeline_parallel={pp}: this suite "
                          "compiles the whole module, and the pipeline engine runs it stage by stage")
    if cfg.train.activation_checkpointing in ("partitioned", "cpu") and pp > 1:
        raise ConfigError(f"train.activation_checkpointing={cfg.train.activation_checkpointing} "
                          "is not wired into the pipeline model of this suite (yet); use full")


def check_site(cfg: SuiteConfig, per_node: int) -> None:
    """Refuse what the site's nodes cannot hold, where the site's config says what they have
    (memory: memory_need, once the plan is made)."""
    c = cfg.cluster
    if c.max_gpus_per_node is not None and per_node > c.max_gpus_per_node:
        raise ConfigError(f"cluster.gpus_per_node={per_node} exceeds the {c.max_gpus_per_node} GPUs per "
                          f"node of this site (cluster.max_gpus_per_node)")


@dataclass(frozen=True)
class MemoryNeed:
    """The memory model's verdict on one run: bytes per device it needs (allowance included),
    what the device has (None: not declared), and why it does not fit (None: it fits, or
    nothing to compare with)."""

    required_bytes: float
    available_bytes: Optional[float]
    problem: Optional[str]


def memory_need(cfg: SuiteConfig, plan: "RunPlan") -> MemoryNeed:
    """Compare the memory model (suite/memory.py: model states, activations, logits and loss,
    buffers, the allocator allowance, the CUDA context) with cluster.gpu_memory_gb."""
    from suite.memory import ALLOCATOR_ALLOWANCE, predict_memory

    need = predict_memory(cfg, plan)
    c, m, s = cfg.cluster, cfg.model, cfg.strategy
    available = None if c.gpu_memory_gb is None else c.gpu_memory_gb * 2 ** 30
    if available is None or need["required_bytes"] <= available:
        return MemoryNeed(need["required_bytes"], available, None)
    gib = lambda v: f"{v / 2 ** 30:.2f} GiB"  # noqa: E731
    terms = (f"model states {gib(need['model_state_bytes'])}, activations {gib(need['activation_bytes'])}, "
             f"logits and loss {gib(need['logits_bytes'])}, buffers {gib(need['buffer_bytes'])}, "
             f"+{ALLOCATOR_ALLOWANCE:.0%} allocator allowance" + (" + the CUDA context" if plan.accelerator == "cuda" else ""))
    advice = (["a higher ZeRO stage or FSDP2"] if s.zero_stage < 3 else []) + [
        "offload", "a smaller train.micro_batch_size", "train.activation_checkpointing=full", "more GPUs"]
    if need["buffer_bytes"] > need["required_bytes"] / 3:
        advice.insert(0, f"a smaller strategy.reduce_bucket_size (now {s.reduce_bucket_size:.3g} elements: "
                         "DeepSpeed allocates the whole bucket)")
    return MemoryNeed(need["required_bytes"], available, (
        f"model={m.name} with strategy={s.name} ({plan.precision}, {cfg.optimizer.name}, micro-batch "
        f"{plan.micro_batch_size}, recompute {cfg.train.activation_checkpointing}, sharding over "
        f"{plan.sharding_size} ranks) needs {gib(need['required_bytes'])} per device by the memory model "
        f"({terms}; docs/memory.md), more than cluster.gpu_memory_gb={c.gpu_memory_gb:g}; try "
        f"{', '.join(advice)}, or submit.try_anyway=true"))


def check_combination(cfg: SuiteConfig, accelerator: str, precision: str) -> None:
    """Refuse what DeepSpeed cannot run on this accelerator, naming the fields."""
    if accelerator == "cpu":
        s = cfg.strategy
        if s.zero_quantized_weights or s.zero_quantized_gradients or s.zero_hpz_partition_size > 1:
            raise ConfigError("ZeRO++ (strategy.zero_quantized_weights, zero_quantized_gradients, "
                              "zero_hpz_partition_size) need a "
                              "GPU: DeepSpeed implements them with CUDA kernels and NCCL groups")
        if precision == "fp16":
            raise ConfigError("precision=fp16 needs a GPU (DeepSpeed: 'Type fp16 is not supported "
                              "on your device'); on the CPU use fp32 or bf16")
        if cfg.optimizer.name == "lamb":
            raise ConfigError("optimizer=lamb needs a GPU (DeepSpeed's Lamb is a CUDA kernel); on "
                              "the CPU use sgd, sgd_momentum, adam, adamw or adagrad")
    if _offloads(cfg) and cfg.optimizer.name not in OFFLOADABLE_OPTIMIZERS:
        raise ConfigError(
            f"optimizer={cfg.optimizer.name} cannot run with strategy={cfg.strategy.name} "
            f"(ZeRO-Offload runs only {list(OFFLOADABLE_OPTIMIZERS)} on the CPU)"
        )


def check_engine(cfg: SuiteConfig, precision: str) -> None:
    """Refuse what a PyTorch baseline (strategy.engine torch_ddp or fsdp2) does not build, naming
    the fields: the baselines are torch's own data parallel and fully sharded data parallel,
    nothing of DeepSpeed's around them. (Their strategy fields: StrategyConfig._check_engine.)"""
    s, t, opt = cfg.strategy, cfg.train, cfg.optimizer
    if s.engine == "deepspeed":
        return
    what = f"strategy.engine={s.engine}"
    for name in ("tensor_parallel", "pipeline_parallel", "sequence_parallel"):
        if getattr(s, name) > 1:
            raise ConfigError(f"strategy.{name}={getattr(s, name)} with {what}: the PyTorch baselines "
                              "are data parallel only; use strategy.engine=deepspeed, or "
                              f"strategy.{name}=1")
    if s.zero_quantized_weights or s.zero_quantized_gradients or s.zero_hpz_partition_size > 1:
        raise ConfigError(f"ZeRO++ (strategy.zero_quantized_weights, zero_quantized_gradients, "
                          f"zero_hpz_partition_size) with {what}: ZeRO++ is DeepSpeed's; leave them "
                          "false / 1")
    if t.activation_checkpointing in ("partitioned", "cpu"):
        raise ConfigError(f"train.activation_checkpointing={t.activation_checkpointing} with {what}: "
                          "partitioned and cpu checkpointing are DeepSpeed's; use full (torch's "
                          "checkpoint per block) or none")
    if precision == "fp16":
        raise ConfigError(f"precision=fp16 with {what}: fp16 would need torch's GradScaler, which "
                          "the baselines do not wire; use bf16 or fp32")
    if opt.name == "lamb":
        raise ConfigError(f"optimizer=lamb with {what}: Lamb is DeepSpeed's kernel, torch has none; "
                          f"use one of {[o for o in OPTIMIZERS if o != 'lamb']}")
    if opt.implementation == "deepspeed":
        raise ConfigError(f"optimizer.implementation=deepspeed with {what}: DeepSpeed's FusedAdam is "
                          "not part of a torch baseline; use auto, torch or torch_fused")
    if t.compile:
        raise ConfigError(f"train.compile=true with {what}: compilation is not wired for the "
                          "PyTorch baselines yet; leave train.compile=false")
    if t.profile_comms:
        raise ConfigError(f"train.profile_comms=true with {what}: DeepSpeed's comms logger counts "
                          "only DeepSpeed's collectives, not DDP's or FSDP2's, so it would record "
                          "nothing true; leave train.profile_comms=false")


def _optimizer_block(cfg: SuiteConfig, accelerator: str) -> Dict[str, Any]:
    opt = cfg.optimizer
    name = opt.name
    if name in ("sgd", "sgd_momentum"):
        return {"type": "SGD",
                "params": {"lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay}}
    if name == "adagrad":
        return {"type": "Adagrad",
                "params": {"lr": opt.lr, "eps": opt.eps, "weight_decay": opt.weight_decay}}
    params: Dict[str, Any] = {"lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps,
                              "weight_decay": opt.weight_decay}
    if name == "lamb":
        return {"type": "Lamb", "params": params}
    # DeepSpeed's "Adam" silently trains AdamW unless adam_w_mode is false.
    params["adam_w_mode"] = name == "adamw"
    implementation = adam_implementation(opt.implementation, accelerator, _offloads(cfg))
    if implementation != "deepspeed":  # torch.optim.Adam/AdamW: nothing to compile
        params["torch_adam"] = True
        if implementation == "torch_fused":
            params["fused"] = True
    return {"type": "AdamW" if name == "adamw" else "Adam", "params": params}


def _offloads(cfg: SuiteConfig) -> bool:
    return cfg.strategy.offload_optimizer or cfg.strategy.offload_params


def adam_implementation(requested: str, accelerator: str, offload: bool) -> str:
    """auto on GPUs: torch's fused kernel (one CUDA kernel per step, no build), or DeepSpeed's
    CPU-Adam under ZeRO-Offload (what offload is built around); on CPUs torch's. DeepSpeed's ops
    compile on first use, which fails on a node without nvcc and the matching CUDA headers."""
    if requested == "auto":
        if accelerator != "cuda":
            return "torch"
        return "deepspeed" if offload else "torch_fused"
    return requested


def compiled_ops(cfg: SuiteConfig, accelerator: str) -> Tuple[Tuple[str, str], ...]:
    """DeepSpeed's C++/CUDA ops the run needs (DeepSpeed's op-builder names), each with the
    field that asks for it. On GPUs they compile with nvcc on first use, so a node without the
    CUDA toolkit fails there; the rank checks before it starts (suite/workload/device.py)."""
    s, opt = cfg.strategy, cfg.optimizer
    offload = _offloads(cfg)
    ops: List[Tuple[str, str]] = []
    if opt.name in ("adam", "adamw") and adam_implementation(opt.implementation, accelerator, offload) == "deepspeed":
        ops.append(("cpu_adam", f"strategy={s.name} (ZeRO-Offload) with optimizer={opt.name}") if offload
                   else ("fused_adam", "optimizer.implementation=deepspeed"))
    if opt.name == "adagrad" and offload:
        ops.append(("cpu_adagrad", f"strategy={s.name} (ZeRO-Offload) with optimizer=adagrad"))
    if opt.name == "lamb":
        ops.append(("fused_lamb", "optimizer=lamb"))
    if s.zero_quantized_weights or s.zero_quantized_gradients:
        ops.append(("quantizer", "strategy.zero_quantized_weights/zero_quantized_gradients"))
    return tuple(ops)


def _scheduler_block(cfg: SuiteConfig) -> Optional[Dict[str, Any]]:
    opt = cfg.optimizer
    if opt.scheduler == "none":
        return None
    params = {"warmup_min_lr": 0.0, "warmup_max_lr": opt.lr,
              "warmup_num_steps": opt.lr_warmup_steps, "warmup_type": "linear"}
    if opt.scheduler == "warmup":
        return {"type": "WarmupLR", "params": params}
    total = cfg.train.warmup_steps + cfg.train.timed_steps
    return {"type": "WarmupDecayLR", "params": {**params, "total_num_steps": max(total, opt.lr_warmup_steps + 1)}}


def _zero_block(cfg: SuiteConfig, accelerator: str) -> Dict[str, Any]:
    s = cfg.strategy
    if s.zero_stage == 0:
        return {"stage": 0}
    block: Dict[str, Any] = {
        "stage": s.zero_stage,
        "reduce_bucket_size": s.reduce_bucket_size,
        "overlap_comm": s.overlap_comm,
        "contiguous_gradients": s.contiguous_gradients,
    }
    if s.zero_stage < 3:
        block["allgather_bucket_size"] = s.allgather_bucket_size
    else:
        block.update(
            stage3_prefetch_bucket_size=s.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=s.stage3_param_persistence_threshold,
            stage3_max_live_parameters=s.stage3_max_live_parameters,
            stage3_max_reuse_distance=s.stage3_max_reuse_distance,
        )
    if s.zero_stage == 3:
        if s.zero_quantized_weights:
            block["zero_quantized_weights"] = True
        if s.zero_quantized_gradients:
            block["zero_quantized_gradients"] = True
        if s.zero_hpz_partition_size > 1:
            block["zero_hpz_partition_size"] = s.zero_hpz_partition_size
    pin = accelerator == "cuda"  # pinned host memory speeds GPU<->CPU copies; moot on the CPU
    if s.offload_optimizer:
        block["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if s.offload_params:
        block["offload_param"] = {"device": "cpu", "pin_memory": pin}
    return block


def deepspeed_config(cfg: SuiteConfig, accelerator: str, precision: str, micro: int, accum: int,
                     global_batch: int) -> Dict[str, Any]:
    """The DeepSpeed config dict for one run."""
    # DeepSpeed checks train_batch_size = micro x accumulation x world size before AutoTP
    # makes its tensor-parallel groups, so under TP it counts the TP ranks as if they were data
    # parallel; the samples per step are still `global_batch` (TP ranks share theirs).
    ds: Dict[str, Any] = {
        "train_batch_size": global_batch * cfg.strategy.tensor_parallel,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "steps_per_print": 1_000_000,  # DeepSpeed's own progress lines are noise in a benchmark
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronises the device in every step by default; the
        # suite times steps itself, and a sync per micro-step would serialise accumulation.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
        "zero_optimization": _zero_block(cfg, accelerator),
        "optimizer": _optimizer_block(cfg, accelerator),
        "gradient_clipping": cfg.optimizer.gradient_clipping,  # DeepSpeed's default is 1.0, not off
    }
    scheduler = _scheduler_block(cfg)
    if scheduler is not None:
        ds["scheduler"] = scheduler
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": cfg.precision.loss_scale,
                      "initial_scale_power": cfg.precision.initial_scale_power}
    if cfg.strategy.tensor_parallel > 1:
        ds["tensor_parallel"] = {"autotp_size": cfg.strategy.tensor_parallel,
                                 "partition_config": models.family(cfg.model.family).TP_PARTITION}
    if cfg.train.activation_checkpointing in ("partitioned", "cpu"):
        ds["activation_checkpointing"] = {
            "partition_activations": True,
            "cpu_checkpointing": cfg.train.activation_checkpointing == "cpu",
            "contiguous_memory_optimization": False,
            "synchronize_checkpoint_boundary": False,
        }
    if cfg.train.profile_comms:
        ds["comms_logger"] = {"enabled": True, "verbose": False, "prof_all": True, "debug": False}
    if cfg.strategy.zero_stage > 0 and cfg.optimizer.name in ("sgd", "sgd_momentum", "lamb"):
        # DeepSpeed refuses optimizers it has not tested with ZeRO unless told to go ahead (its
        # ZeRO list has FusedAdam, CPU-Adam and torch's Adam/AdamW, not SGD or FusedLamb).
        ds["zero_allow_untested_optimizer"] = True
    return ds


# torch's own default DDP bucket (MB): what a plain torch DDP user gets, and it overlaps the
# all-reduce with the backward pass. DeepSpeed's reduce_bucket_size (elements, 500M by default)
# is a different knob of a different engine, so it is not translated.
DDP_BUCKET_CAP_MB = 25


def _torch_optimizer(cfg: SuiteConfig, accelerator: str) -> Dict[str, Any]:
    """The torch.optim class and arguments DeepSpeed builds for the same config (its
    _configure_basic_optimizer with torch_adam, SGD and Adagrad from torch.optim), from the
    same block, so that the hyperparameters cannot drift apart."""
    block = _optimizer_block(cfg, accelerator)
    params = dict(block["params"])
    if block["type"] in ("Adam", "AdamW"):
        # DeepSpeed reads these two itself and passes the rest to torch.optim.Adam/AdamW; the
        # mode is the class (check_engine refused implementation=deepspeed, so torch_adam is set)
        adam_w_mode = params.pop("adam_w_mode")
        params.pop("torch_adam")
        return {"class": "torch.optim." + ("AdamW" if adam_w_mode else "Adam"), "params": params}
    return {"class": f"torch.optim.{block['type']}", "params": params}


def torch_config(cfg: SuiteConfig, accelerator: str, precision: str, micro: int, accum: int,
                 global_batch: int) -> Dict[str, Any]:
    """What a PyTorch baseline builds, as plain JSON values: suite/workload/torch_engine.py builds
    its wrapper, optimizer and scheduler from exactly these entries."""
    s, opt = cfg.strategy, cfg.optimizer
    scheduler = _scheduler_block(cfg)
    config: Dict[str, Any] = {
        "engine": s.engine,
        "device": accelerator,
        "precision": precision,
        "micro_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "global_batch_size": global_batch,
        # as DeepSpeed's engine.backward: each micro-batch's loss / accumulation steps, gradients
        # summed over the micro-batches and averaged over the ranks, one optimizer step per
        # global batch; the gradient collective only in the last micro-batch's backward
        "loss_scale_per_micro_batch": 1.0 / accum,
        "gradient_sync": ("last micro-batch only (DDP no_sync)" if s.engine == "torch_ddp"
                          else "last micro-batch only (FSDP2 set_requires_gradient_sync(False))"),
        "activation_checkpointing": ("torch.utils.checkpoint per block (non-reentrant)"
                                     if cfg.train.activation_checkpointing == "full" else None),
        "optimizer": _torch_optimizer(cfg, accelerator),
        # DeepSpeed's own scheduler classes on the torch optimizer, stepped once per optimizer
        # step after optimizer.step() and zero_grad(), as DeepSpeed's _take_model_step does
        "lr_scheduler": None if scheduler is None else {
            "class": f"deepspeed.runtime.lr_schedules.{scheduler['type']}", "params": scheduler["params"]},
        # 0 = off; torch.nn.utils.clip_grad_norm_ scales by max_norm / (norm + 1e-6) when that
        # is below 1, DeepSpeed's clip_grad_norm_ alike (deepspeed/runtime/utils.py)
        "gradient_clipping": opt.gradient_clipping,
        "order": ["clip_grad_norm_", "optimizer.step", "optimizer.zero_grad", "lr_scheduler.step"],
    }
    bf16 = precision == "bf16"
    if s.engine == "torch_ddp":
        config["ddp"] = {"gradient_as_bucket_view": True, "bucket_cap_mb": DDP_BUCKET_CAP_MB}
        # fp32 weights, gradients and optimizer states; bf16 matmuls through autocast around
        # the forward pass (DeepSpeed's bf16 ZeRO-0 keeps bf16 weights and an fp32 master copy)
        config["autocast"] = {"dtype": "bfloat16", "region": "forward"} if bf16 else None
    else:
        config["fsdp2"] = {
            "units": ["each of model.blocks", "model (embedding, final norm, output head)"],
            "reshard_after_forward": s.fsdp_reshard_after_forward,
            # fp32 sharded weights and optimizer states; bf16 gathered weights for compute and
            # fp32 gradient reduction (DeepSpeed's bf16 ZeRO-3 reduces in bf16)
            "mp_policy": {"param_dtype": "bfloat16" if bf16 else None,
                          "reduce_dtype": "float32" if bf16 else None},
        }
    return config


def plan_run(cfg: DictConfig | SuiteConfig, local_gpus: int = 0, check_memory: bool = True) -> RunPlan:
    """Validate one run's config and derive its plan. `local_gpus`: GPUs the submitting
    machine sees (used only where the config leaves accelerator or ranks to be detected).
    `check_memory`: refuse a run the memory model says will not fit (unless
    submit.try_anyway); the autotune search asks for the verdict itself (memory_need)."""
    typed = to_object(cfg)
    accelerator = resolve_accelerator(typed.cluster.accelerator, local_gpus)
    precision = resolve_precision(typed.precision.name, accelerator)
    check_engine(typed, precision)  # first: its reasons name the engine, not a DeepSpeed limit
    check_combination(typed, accelerator, precision)
    per_node = ranks_per_node(typed, accelerator, local_gpus)
    world = typed.cluster.nodes * per_node
    check_layout(typed, world)
    tp, pp = typed.strategy.tensor_parallel, typed.strategy.pipeline_parallel
    sp = typed.strategy.sequence_parallel
    dp = world // (tp * pp * sp)
    check_site(typed, per_node)
    micro, accum, global_batch = batch_sizes(typed.train.micro_batch_size,
                                             typed.train.grad_accum_steps,
                                             typed.train.global_batch_size, dp)
    baseline = typed.strategy.engine != "deepspeed"
    plan = RunPlan(
        accelerator=accelerator,
        precision=precision,
        nodes=typed.cluster.nodes,
        ranks_per_node=per_node,
        world_size=world,
        data_parallel_size=dp,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        sequence_parallel=sp,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        global_batch_size=global_batch,
        ds_config={} if baseline else deepspeed_config(typed, accelerator, precision, micro, accum,
                                                       global_batch),
        compiled_ops=compiled_ops(typed, accelerator),
        torch_config=torch_config(typed, accelerator, precision, micro, accum, global_batch)
        if baseline else {},
    )
    if check_memory and not typed.submit.try_anyway and typed.workload.name == "train":
        need = memory_need(typed, plan)
        if need.problem:
            raise ConfigError(need.problem)
    return plan


def collective_timeout_s(init_timeout_s: float, step_timeout_s: float) -> float:
    """torch.distributed's timeout, which bounds every collective as well as the rendezvous:
    longer than both of the suite's own limits, so the suite's watchdog ends a stuck run first
    and records why (NCCL's watchdog would abort the rank with no record)."""
    return max(init_timeout_s, step_timeout_s) + 60.0


def estimated_cost(cfg: SuiteConfig, plan: RunPlan) -> float:
    """A job's expected length in arbitrary units, only for ordering: training FLOPs per
    device (6 x parameters x tokens) over every step, plus a fixed start-up cost."""
    m = cfg.model
    params = models.param_count(m)["total"]
    steps = cfg.train.warmup_steps + cfg.train.timed_steps
    flops_per_device = 6.0 * params * plan.global_batch_size * m.seq_len * steps / plan.world_size
    zero3_penalty = 2.0 if cfg.strategy.zero_stage == 3 else 1.0
    return 1e9 + flops_per_device * zero3_penalty
