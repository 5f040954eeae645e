"""Pure planning: turn one composed config into a RunPlan (world size, batch math, the
DeepSpeed config dict, the resources to ask for), refusing combinations that cannot run.

Nothing here touches processes, files or devices, so tests call it directly.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from suite import models
from suite.config import OPTIMIZERS, ConfigError, SuiteConfig, deepspeed_overlap_comm
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
    #: the memory the run is checked against (None: unknown, not checked), each with where it
    #: comes from or why it is unknown: per GPU (cluster.gpu_memory_gb, else the local GPUs'),
    #: and host memory per node (cluster.host_memory_gb, Slurm's cluster.mem_gb, or this
    #: machine's MemAvailable at planning). A CPU rank is checked against, and limits itself
    #: to, host_memory_bytes / ranks_per_node (docs/memory.md); absent in older plans
    gpu_memory_bytes: Optional[float] = None
    gpu_memory_source: str = ""
    host_memory_bytes: Optional[float] = None
    host_memory_source: str = ""

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
    from suite.models import moe

    moe.check_layout(m, s.expert_parallel, world // (tp * pp * sp), tp, pp, sp, s.zero_stage, s.engine,
                     cfg.train.activation_checkpointing, s.contiguous_gradients, cfg.train.compile)
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
    if cfg.train.activation_checkpointing == "partitioned" and tp == 1:
        raise ConfigError(f"train.activation_checkpointing=partitioned with strategy.tensor_parallel=1: "
                          "DeepSpeed partitions checkpointed activations across tensor-parallel ranks "
                          "only, and with one there is nothing to partition over; use it with "
                          "strategy.tensor_parallel > 1, or full (torch's checkpoint per block) or "
                          "cpu (DeepSpeed's, kept in host memory)")


def check_site(cfg: SuiteConfig, per_node: int) -> None:
    """Refuse what the site's nodes cannot hold, where the site's config says what they have
    (memory: memory_need, once the plan is made)."""
    c = cfg.cluster
    if c.max_gpus_per_node is not None and per_node > c.max_gpus_per_node:
        raise ConfigError(f"cluster.gpus_per_node={per_node} exceeds the {c.max_gpus_per_node} GPUs per "
                          f"node of this site (cluster.max_gpus_per_node)")


@dataclass(frozen=True)
class MemoryNeed:
    """The memory model's verdict on one run: bytes it needs (allowance included) per device,
    or per rank of host memory on the CPU (`kind`: "device" or "host"), what it has (None: not
    known), and why it does not fit (None: it fits, or nothing to compare with)."""

    required_bytes: float
    available_bytes: Optional[float]
    problem: Optional[str]
    kind: str = "device"
    #: where available_bytes comes from, or why it is unknown
    source: str = ""


def available_memory(cfg: SuiteConfig, accelerator: str, local_memory: Any = None
                     ) -> Tuple[Optional[float], str, Optional[float], str]:
    """(bytes per GPU, its source, host bytes per node, its source): what the run will have,
    from the config, else from `local_memory` (suite.memory.LocalMemory: this machine's, read
    by the launcher at planning time) for a local run; a source says why a figure is unknown.

    Host memory of this machine is MemAvailable, not MemTotal: what can be given to the run
    now without swapping or taking it from other work (the kernel, page cache it cannot drop,
    other processes); the local scheduler runs one run at a time, each with all of it."""
    c, gib = cfg.cluster, 2 ** 30
    local = c.scheduler == "local"
    if c.gpu_memory_gb is not None:
        gpu, gpu_source = c.gpu_memory_gb * gib, f"cluster.gpu_memory_gb={c.gpu_memory_gb:g}"
    elif accelerator != "cuda":
        gpu, gpu_source = None, "no GPU"
    elif local and local_memory is not None and local_memory.gpu_bytes:
        gpu = float(local_memory.gpu_bytes)
        gpu_source = f"{local_memory.gpu_name or 'GPU'}: the smallest GPU of this machine, read through NVML"
    else:
        gpu, gpu_source = None, ("not checked: the GPUs' memory is not declared (cluster.gpu_memory_gb)"
                                 + ("" if local else "; a Slurm sweep cannot read the compute nodes'"))
    if c.host_memory_gb is not None:
        host, host_source = c.host_memory_gb * gib, f"cluster.host_memory_gb={c.host_memory_gb:g}"
    elif not local and c.mem_gb > 0:
        host, host_source = c.mem_gb * gib, f"cluster.mem_gb={c.mem_gb} (Slurm --mem per node)"
    elif local and local_memory is not None and local_memory.host_available_bytes:
        host = float(local_memory.host_available_bytes)
        total = local_memory.host_total_bytes
        host_source = (f"MemAvailable {host / gib:.2f} GiB of this machine at planning"
                       + (f", of MemTotal {total / gib:.2f} GiB" if total else ""))
    else:
        host, host_source = None, ("not checked: the nodes' host memory is not declared "
                                   "(cluster.host_memory_gb, or cluster.mem_gb for Slurm's --mem)"
                                   if not local else "not checked: this machine's memory was not read")
    return gpu, gpu_source, host, host_source


def _gib(v: float) -> str:
    return f"{v / 2 ** 30:.2f} GiB"


def _requirement(kind: str, cfg: SuiteConfig, plan: "RunPlan") -> Dict[str, float]:
    from suite.memory import host_memory_per_rank, predict_memory

    return host_memory_per_rank(cfg, plan) if kind == "host" else predict_memory(cfg, plan)


def memory_need(cfg: SuiteConfig, plan: "RunPlan") -> MemoryNeed:
    """Compare the memory model (suite/memory.py: model states, activations, logits and loss,
    buffers, the allocator allowance, the CUDA context) with what the run has: each GPU's
    memory (plan.gpu_memory_bytes; on a CPU run a declared cluster.gpu_memory_gb stands for a
    rank's device memory), and on the CPU each rank's share of its node's host memory
    (plan.host_memory_bytes / ranks per node) against host_memory_per_rank. The first check
    that fails is the verdict, with what would fit instead (by the same model); with none
    failing, the device check's figures where there is one."""
    checks = []
    if getattr(plan, "gpu_memory_bytes", None) is not None:
        checks.append(("device", plan.gpu_memory_bytes, plan.gpu_memory_source))
    if plan.accelerator == "cpu" and getattr(plan, "host_memory_bytes", None) is not None:
        checks.append(("host", plan.host_memory_bytes / plan.ranks_per_node,
                       f"{plan.host_memory_source}, / {plan.ranks_per_node} ranks per node"))
    verdicts = []
    for kind, available, source in checks:
        need = _requirement(kind, cfg, plan)
        if need["required_bytes"] > available:
            return MemoryNeed(need["required_bytes"], available,
                              _memory_problem(cfg, plan, kind, need, available, source), kind, source)
        verdicts.append(MemoryNeed(need["required_bytes"], available, None, kind, source))
    if verdicts:
        return verdicts[0]
    # nothing to compare with: predict_memory's per-device figure, as before host memory was
    # checked (the autotune search records it), and why the run's own kind is not checked
    kind = "host" if plan.accelerator == "cpu" else "device"
    source = getattr(plan, "host_memory_source" if kind == "host" else "gpu_memory_source", "") or "not checked"
    return MemoryNeed(_requirement("device", cfg, plan)["required_bytes"], None, None, kind, source)


def _layout(cfg: SuiteConfig, plan: "RunPlan") -> str:
    s = cfg.strategy
    engine = {"torch_ddp": "torch DDP", "fsdp2": "FSDP2"}.get(s.engine, f"ZeRO-{s.zero_stage}")
    if s.offload_optimizer or s.offload_params:
        engine += " offload " + "+".join(n for n, on in (("optimizer", s.offload_optimizer),
                                                          ("params", s.offload_params)) if on)
    parallel = "".join(f", {name} {d}" for name, d in (("tensor parallel", plan.tensor_parallel),
                                                       ("pipeline parallel", plan.pipeline_parallel),
                                                       ("sequence parallel", plan.sequence_parallel)) if d > 1)
    # ZeRO-0 and torch DDP keep a whole copy on every data-parallel rank: nothing is sharded
    shards = s.zero_stage > 0 or s.engine == "fsdp2"
    sharding = (f", sharding over {plan.sharding_size} ranks" if shards
                else f", replicated on {plan.sharding_size} data-parallel ranks")
    return (f"{engine}, {plan.nodes} node{'s' if plan.nodes > 1 else ''} x {plan.ranks_per_node} ranks"
            f"{parallel}{sharding}, {plan.precision}, {cfg.optimizer.name}, "
            f"micro-batch {plan.micro_batch_size}, recompute {cfg.train.activation_checkpointing}")


def _memory_problem(cfg: SuiteConfig, plan: "RunPlan", kind: str, need: Dict[str, float],
                    available: float, source: str) -> str:
    from suite.memory import ALLOCATOR_ALLOWANCE

    m, s = cfg.model, cfg.strategy
    terms = (f"model states {_gib(need['model_state_bytes'])}, activations {_gib(need['activation_bytes'])}, "
             f"logits and loss {_gib(need['logits_bytes'])}, buffers {_gib(need['buffer_bytes'])}, "
             f"+{ALLOCATOR_ALLOWANCE:.0%} allocator allowance")
    if need.get("build_bytes", 0) > need["predicted_bytes"]:
        terms += f"; the fp32 weights built before the engine shards them, {_gib(need['build_bytes'])}, are the peak"
    if kind == "host":
        terms += f", + {_gib(need['runtime_bytes'])} for the rank's runtime (Python, torch, DeepSpeed)"
        what, has = "of host memory per rank", f"the {_gib(available)} each rank has ({source})"
    else:
        terms += " + the CUDA context" if plan.accelerator == "cuda" else ""
        what = "per device"
        has = (f"{source}" if source.startswith("cluster.") else f"the {_gib(available)} per device ({source})")
    try:
        fits = what_would_fit(cfg, plan, kind, available)
    except (ConfigError, ValueError):  # a variant its own schema refuses: no suggestion, same refusal
        fits = []
    advice = ("; ".join(fits) if fits else
              "nothing this check tries fits (a smaller preset, more nodes, a higher ZeRO stage"
              + (", offload" if plan.accelerator == "cuda" else "") + ", micro-batch 1, recompute full)")
    return (f"model={m.name} ({_params(m)} parameters) with strategy={s.name} ({_layout(cfg, plan)}) "
            f"needs {_gib(need['required_bytes'])} {what} by the memory model ({terms}; docs/memory.md), "
            f"more than {has}. Would fit, by the same model: {advice}; or submit.try_anyway=true "
            "runs it anyway")


def _params(m: Any) -> str:
    return f"{models.param_count(m)['total']:,}"


#: the most nodes the "more nodes" suggestion looks at
SUGGEST_MAX_NODES = 1024
#: the reduce bucket (elements) the suggestions try: a tenth of DeepSpeed's default
SMALL_REDUCE_BUCKET = 50_000_000


def what_would_fit(cfg: SuiteConfig, plan: "RunPlan", kind: str, available: float) -> List[str]:
    """What would fit in `available` bytes (per device, or per rank of host memory: `kind`)
    instead, each computed with the memory model of the check, one change at a time: a higher
    ZeRO stage (FSDP2 for torch DDP), offload (GPUs only: on the CPU offloaded states stay in
    the same host memory), more nodes of the same memory (ranks per node unchanged: more ranks
    on one node share its memory), micro-batch 1, full recompute, the largest smaller model
    preset of the family (conf/model) in the same layout. When none fits alone: the most
    sharded layout (ZeRO-3 or FSDP2, with offload on GPUs) on more nodes. Each entry names the
    override and the bytes it would need."""
    import dataclasses

    from suite.memory import model_presets

    s, t = cfg.strategy, cfg.train

    def need(c: SuiteConfig, p: "RunPlan") -> float:
        return _requirement(kind, c, p)["required_bytes"]

    def with_strategy(**fields: Any) -> SuiteConfig:
        return dataclasses.replace(cfg, strategy=dataclasses.replace(s, **fields))

    model_parallel = plan.tensor_parallel * plan.pipeline_parallel * plan.sequence_parallel
    # the node counts whose ranks the model-parallel groups divide: multiples of this step
    step = model_parallel // math.gcd(model_parallel, plan.ranks_per_node)

    def on_nodes(nodes: int) -> "RunPlan":
        world = nodes * plan.ranks_per_node
        return dataclasses.replace(plan, nodes=nodes, world_size=world,
                                   data_parallel_size=world // model_parallel)

    def fewest_nodes(c: SuiteConfig) -> Optional[Tuple[int, float]]:
        """The fewest nodes (more than now, a count the layout divides) on which `c` fits: a
        search over a requirement that does not grow with the nodes (sharding only divides)."""
        lo, hi = plan.nodes // step, SUGGEST_MAX_NODES // step  # in steps: lo does not fit
        if hi <= lo or need(c, on_nodes(hi * step)) > available:
            return None
        while hi - lo > 1:  # hi fits
            mid = (lo + hi) // 2
            if need(c, on_nodes(mid * step)) <= available:
                hi = mid
            else:
                lo = mid
        return hi * step, need(c, on_nodes(hi * step))

    def nodes_text(n: int) -> str:
        return (f"cluster.nodes={n}" if cfg.cluster.scheduler == "slurm"
                else f"{n} nodes like this machine (a Slurm cluster, cluster.nodes={n})")

    fits: List[str] = []
    sharded: Optional[Tuple[str, SuiteConfig]] = None
    if s.engine == "deepspeed":
        for stage in range(s.zero_stage + 1, 4):
            if plan.pipeline_parallel > 1 and stage >= 2:
                break
            c = with_strategy(zero_stage=stage)
            sharded = (f"strategy.zero_stage={stage}", c)
            if need(c, plan) <= available:
                fits.append(f"strategy.zero_stage={stage} ({_gib(need(c, plan))})")
                break
    elif s.engine == "torch_ddp":
        c = with_strategy(engine="fsdp2", zero_stage=3)
        sharded = ("strategy=fsdp2", c)
        if need(c, plan) <= available:
            fits.append(f"strategy=fsdp2 ({_gib(need(c, plan))})")
    offloadable = (plan.accelerator == "cuda" and s.engine == "deepspeed" and plan.tensor_parallel == 1
                   and plan.pipeline_parallel == 1 and cfg.optimizer.name in OFFLOADABLE_OPTIMIZERS)
    if offloadable:
        for stage, params in sorted({(max(s.zero_stage, 1), False), (max(s.zero_stage, 2), False), (3, True)}):
            fields = dict(zero_stage=stage, offload_optimizer=True, offload_params=params)
            if all(getattr(s, k) == v for k, v in fields.items()):
                continue
            c = with_strategy(**fields)
            override = (f"strategy.zero_stage={stage} strategy.offload_optimizer=true"
                        + (" strategy.offload_params=true" if params else ""))
            sharded = (override, c)
            if need(c, plan) <= available:
                fits.append(f"{override} ({_gib(need(c, plan))})")
                break
    if s.engine == "deepspeed" and s.zero_stage > 0 and s.reduce_bucket_size > SMALL_REDUCE_BUCKET:
        c = with_strategy(reduce_bucket_size=SMALL_REDUCE_BUCKET)  # DeepSpeed allocates it whole
        if need(c, plan) <= available:
            fits.append(f"strategy.reduce_bucket_size={SMALL_REDUCE_BUCKET:.0e} ({_gib(need(c, plan))})")
    more = fewest_nodes(cfg)
    if more:
        fits.append(f"{nodes_text(more[0])} ({_gib(more[1])} per rank)")
    if plan.micro_batch_size > 1 and (t.global_batch_size is None or t.grad_accum_steps is None):
        # a set global batch stays: accumulation takes up the micro-batch's samples
        accum = plan.grad_accum_steps * (plan.micro_batch_size if t.global_batch_size is not None else 1)
        p = dataclasses.replace(plan, micro_batch_size=1, grad_accum_steps=accum)
        if need(cfg, p) <= available:
            fits.append(f"train.micro_batch_size=1 ({_gib(need(cfg, p))})")
    if t.activation_checkpointing == "none":
        c = dataclasses.replace(cfg, train=dataclasses.replace(t, activation_checkpointing="full"))
        if need(c, plan) <= available:
            fits.append(f"train.activation_checkpointing=full ({_gib(need(c, plan))})")
    smaller = _smaller_preset(cfg, plan, need, available, model_presets())
    if smaller:
        fits.append(smaller)
    if not fits and sharded is not None:
        more = fewest_nodes(sharded[1])
        if more:
            fits.append(f"{sharded[0]} on {nodes_text(more[0])} ({_gib(more[1])} per rank)")
    return fits


def _smaller_preset(cfg: SuiteConfig, plan: "RunPlan", need, available: float, presets: Dict[str, Any]
                    ) -> Optional[str]:
    """The largest model preset of the same family and kind (dense, or mixture of experts) with
    fewer parameters that fits this layout."""
    import dataclasses

    from suite.config import ConfigError
    from suite.models import moe

    m = cfg.model
    size = models.param_count(m)["total"]
    candidates = sorted(((models.param_count(p)["total"], name, p) for name, p in presets.items()
                         if p.family == m.family and moe.is_moe(p) == moe.is_moe(m)
                         and models.param_count(p)["total"] < size), reverse=True)
    for params, name, preset in candidates:
        try:
            models.family(preset.family).check_layout(preset, plan.tensor_parallel, plan.sequence_parallel,
                                                      plan.pipeline_parallel)
        except ConfigError:
            continue
        if preset.n_layers < plan.pipeline_parallel:
            continue
        required = need(dataclasses.replace(cfg, model=preset), plan)
        if required <= available:
            return f"model={name} ({params:,} parameters, {_gib(required)})"
    return None


def memory_line(cfg: SuiteConfig, plan: "RunPlan") -> str:
    """What the memory check says of a planned run, for the dry run: the figures it compared,
    or why it did not check."""
    need = memory_need(cfg, plan)
    what = "host memory per rank" if need.kind == "host" else "memory per device"
    if need.available_bytes is None:
        return f"{what}: {need.source}"
    verdict = "does NOT fit" if need.problem else "fits"
    return (f"{what}: needs {_gib(need.required_bytes)} of {_gib(need.available_bytes)} ({need.source}): "
            f"{verdict}")


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
        "overlap_comm": deepspeed_overlap_comm(s),  # written out, so the record says which
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


def plan_run(cfg: DictConfig | SuiteConfig, local_gpus: int = 0, check_memory: bool = True,
             local_memory: Any = None, check_deepspeed: bool = True) -> RunPlan:
    """Validate one run's config and derive its plan. `local_gpus`: GPUs the submitting
    machine sees (used only where the config leaves accelerator or ranks to be detected).
    `local_memory`: the submitting machine's memory (suite.memory.LocalMemory, read by the
    launcher), for local runs whose config does not declare it; without it such a run is not
    checked. `check_memory`: refuse a run the memory model says will not fit (unless
    submit.try_anyway); the autotune search asks for the verdict itself (memory_need).
    `check_deepspeed`: put a training run's DeepSpeed config to DeepSpeed's own validation
    (check_deepspeed_config; deepspeed is imported once, on the first such run)."""
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
    gpu_memory, gpu_source, host_memory, host_source = available_memory(typed, accelerator, local_memory)
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
        gpu_memory_bytes=gpu_memory, gpu_memory_source=gpu_source,
        host_memory_bytes=host_memory, host_memory_source=host_source,
    )
    if check_deepspeed and typed.workload.name == "train":
        check_deepspeed_config(typed, plan)
    if check_memory and not typed.submit.try_anyway and typed.workload.name == "train":
        need = memory_need(typed, plan)
        if need.problem:
            raise ConfigError(need.problem)
    return plan


# ---- DeepSpeed's own config validation, at planning time ------------------------------------

class _World:
    """What DeepSpeedConfig asks of deepspeed.comm while it validates, without a process group:
    rank 0 of `world` ranks (DeepSpeed's own fallback without one is a world of 1, which would
    accept any batch arithmetic)."""

    def __init__(self, world: int) -> None:
        self.world = world

    def get_rank(self, group: Any = None) -> int:
        return 0

    def get_world_size(self, group: Any = None) -> int:
        return self.world


class _DataParallel:
    """The `mpu` DeepSpeedConfig reads: the data-parallel world size the run's engine counts."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_data_parallel_world_size(self) -> int:
        return self.size


def deepspeed_world_sizes(plan: "RunPlan") -> Dict[str, int]:
    """The world sizes DeepSpeed checks train_batch_size against in the run (suite/workload/
    train.py): deepspeed.initialize, whose mpu is the pipeline grid (data parallel) or Ulysses'
    parallel_state_sp (world / sp), or none under AutoTP (the whole world: AutoTP makes its
    groups after the check, hence train_batch_size x tp); and DeepSpeed's activation
    checkpointing (checkpointing.configure with mpu=None: every rank, over
    "sequence_parallel_size" where the run gives it)."""
    engine = plan.world_size // (plan.pipeline_parallel * plan.sequence_parallel)
    return {"engine": engine, "checkpointing": plan.world_size}


_DEEPSPEED_CHECKS: Dict[str, Optional[str]] = {}


def _deepspeed_verdict(config: Dict[str, Any], world: int, mpu_size: Optional[int]) -> Optional[str]:
    """DeepSpeed's own refusal of `config` (its message), or None; cached per distinct config,
    and deepspeed imported once, on the first call (~2 s)."""
    import json

    key = json.dumps([config, world, mpu_size], sort_keys=True, default=str)
    if key in _DEEPSPEED_CHECKS:
        return _DEEPSPEED_CHECKS[key]
    import logging

    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its import's and its config's lines are noise here
    try:
        try:
            import deepspeed.runtime.config as ds_config
        except ImportError:  # not installed where the sweep is planned: checked by the run
            return None
        real = ds_config.dist
        ds_config.dist = _World(world)
        try:
            ds_config.DeepSpeedConfig(json.loads(json.dumps(config)),  # a copy: DeepSpeed edits blocks
                                      mpu=None if mpu_size is None else _DataParallel(mpu_size))
            verdict = None
        except Exception as exc:  # its asserts, ValueErrors, pydantic's ValidationErrors
            verdict = f"{type(exc).__name__}: {str(exc).strip() or repr(exc)}"
        finally:
            ds_config.dist = real
    finally:
        logging.disable(disabled)
    _DEEPSPEED_CHECKS[key] = verdict
    return verdict


def check_deepspeed_config(cfg: SuiteConfig, plan: "RunPlan") -> None:
    """Run DeepSpeed's own config validation (deepspeed.runtime.config.DeepSpeedConfig: batch
    arithmetic, the ZeRO, precision, optimizer and checkpointing blocks) as the run's engine and
    its activation checkpointing will, with the world sizes they will have; DeepSpeed's refusal
    becomes the plan's, in DeepSpeed's words."""
    if plan.engine != "deepspeed" or not plan.ds_config:
        return
    worlds = deepspeed_world_sizes(plan)
    verdict = _deepspeed_verdict(plan.ds_config, worlds["engine"], worlds["engine"])
    where = "deepspeed.initialize"
    if verdict is None and cfg.train.activation_checkpointing in ("partitioned", "cpu"):
        config = dict(plan.ds_config)
        if plan.sequence_parallel > 1:  # DeepSpeed's own key: its world is all ranks / sp
            config["sequence_parallel_size"] = plan.sequence_parallel
        verdict = _deepspeed_verdict(config, worlds["checkpointing"], None)
        where = "deepspeed.checkpointing.configure"
    if verdict is not None:
        raise ConfigError(
            f"DeepSpeed refuses this run's config ({where}, checked at planning with the run's "
            f"world size {plan.world_size}: data parallel {plan.data_parallel_size}, tensor "
            f"{plan.tensor_parallel}, pipeline {plan.pipeline_parallel}, sequence {plan.sequence_parallel}; "
            f"strategy={cfg.strategy.name}, train.micro_batch_size={plan.micro_batch_size}, "
            f"train.grad_accum_steps={plan.grad_accum_steps}): {verdict}")


# ---- token files (data=tokens): the one check that reads, and only metadata ---------------------

#: what a filesystem needs on the machine that plans the sweep, by fsspec protocol
FILESYSTEM_NEEDS = {
    "hdfs": ("pyarrow's HDFS client needs a Java runtime and libhdfs here: install a JDK and set "
             "JAVA_HOME, set HADOOP_HOME (or ARROW_LIBHDFS_DIR, the folder of libhdfs.so) and "
             "CLASSPATH=$(hadoop classpath --glob)"),
    "webhdfs": "WebHDFS needs the namenode's HTTP address reachable from here (and Kerberos where the cluster uses it)",
    "s3": ("s3fs needs credentials here (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
           "or ~/.aws/credentials) and the endpoint reachable"),
    "gs": "gcsfs needs credentials here (GOOGLE_APPLICATION_CREDENTIALS, or gcloud auth application-default login)",
    "abfs": ("adlfs needs the storage account (AZURE_STORAGE_ACCOUNT_NAME) and a credential "
             "(AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_CONNECTION_STRING or az login) here"),
}
for _alias, _protocol in (("s3a", "s3"), ("gcs", "gs"), ("abfss", "abfs"), ("az", "abfs"),
                          ("viewfs", "hdfs"), ("arrow_hdfs", "hdfs"), ("swebhdfs", "webhdfs")):
    FILESYSTEM_NEEDS[_alias] = FILESYSTEM_NEEDS[_protocol]


def _first_line(exc: BaseException) -> str:
    """An exception's message, its first line only (pyarrow's libjvm error lists ~100 paths)."""
    text = str(exc).strip() or repr(exc)
    lines = text.splitlines()
    first = lines[0][:400]
    return f"{type(exc).__name__}: {first}" + (f" (+{len(lines) - 1} more lines not shown)" if len(lines) > 1 else "")


class _CapturedStderr:
    """The process's stderr (file descriptor 2) held while a filesystem opens: pyarrow's libhdfs
    loader writes a line there for each of ~100 places it looks for libjvm. Written back when
    the filesystem opened (nothing was wrong), dropped when it failed (the refusal says why)."""

    def __enter__(self):
        import sys
        import tempfile

        sys.stderr.flush()
        self.held = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.held.fileno(), 2)
        return self

    def __exit__(self, kind, exc, tb):
        import sys

        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if kind is None:
            self.held.seek(0)
            text = self.held.read()
            if text:
                sys.stderr.write(text.decode(errors="replace"))
        self.held.close()
        return False


@functools.lru_cache(maxsize=None)
def token_file_samples(url: str, token_dtype: str, seq_len: int) -> Tuple[Optional[str], int]:
    """(why data=tokens cannot train on `url`, or None; its samples of seq_len + 1 tokens), from
    the file's size alone (fsspec's info: a stat, nothing read), for a local path and any fsspec
    URL. Any exception fsspec raises while it opens the filesystem or stats the path becomes the
    reason, naming data.path, the protocol, the exception and what to provide."""
    import fsspec

    from suite.workload.tokens import DTYPES

    protocol = fsspec.core.split_protocol(url)[0] or "file"
    need = FILESYSTEM_NEEDS.get(protocol, f"provide what fsspec's {protocol!r} filesystem needs here "
                                          "(its package, credentials, network access)")
    fix = (f"{need}; the machine that submits plans every point, so it must reach the file too; or "
           "copy the file to a local path the nodes share")
    try:
        with _CapturedStderr():
            fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:  # the filesystem's package is not installed: fsspec says which
        return f"data.path={url}: {exc}", 0
    except ValueError as exc:  # an unknown protocol ("Protocol not known: nosuch")
        if "protocol" in str(exc).lower():
            return f"data.path={url}: {exc}", 0
        return f"data.path={url}: the {protocol!r} filesystem could not be opened: {_first_line(exc)}; {fix}", 0
    except Exception as exc:  # a filesystem that is installed but cannot load or connect
        return f"data.path={url}: the {protocol!r} filesystem could not be opened: {_first_line(exc)}; {fix}", 0
    try:
        with _CapturedStderr():
            info = fs.info(path)
    except FileNotFoundError:
        return f"data.path={url}: no such file", 0
    except Exception as exc:  # credentials, network, permissions: what the filesystem said
        return (f"data.path={url}: the {protocol!r} filesystem could not stat it: {_first_line(exc)}; "
                f"{fix}"), 0
    if info.get("type", "file") != "file":
        return f"data.path={url}: no such file (it is a {info.get('type')})", 0
    size = int(info.get("size") or 0)
    width = DTYPES[token_dtype]().itemsize
    tokens = size // width
    samples = max(tokens - 1, 0) // seq_len
    if samples < 1:
        return (f"data.path={url} holds {tokens:,} tokens ({size:,} bytes of data.token_dtype="
                f"{token_dtype}, {width} bytes each), fewer than one sample of model.seq_len={seq_len} "
                f"+ 1 = {seq_len + 1:,} tokens; write a longer file (python -m suite.workload.data "
                "FILE --tokens N) or lower model.seq_len"), 0
    return None, samples


def check_data(cfg: SuiteConfig) -> Optional[int]:
    """data=tokens: refuse a data.path that cannot be read or holds less than one sample of the
    model's sequence (ConfigError naming data.path); its samples, or None for synthetic data."""
    if cfg.data.name != "tokens":
        return None
    problem, samples = token_file_samples(cfg.data.path, cfg.data.token_dtype, cfg.model.seq_len)
    if problem:
        raise ConfigError(problem)
    return samples


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
