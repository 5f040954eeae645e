"""Typed schemas for every sweep axis, registered with Hydra's ConfigStore.

The YAML files in conf/ extend these schemas; Hydra rejects unknown keys and wrongly typed
values when it composes, and `__post_init__` rejects values outside the allowed range, naming
the field (suite/plain_config.py builds these dataclasses from the composed values).
"""

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the field."""


def _choice(field_name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{field_name}={value!r} is not allowed; choose one of {list(allowed)}")


def _finite(field_name: str, value: Any) -> None:
    """Refuse a float that is not a finite number (NaN, inf), in a list or mapping too: every
    range check compares (`x > 0`, `0 <= x < 1`), and NaN is neither above nor below anything,
    so without this a NaN would pass a check written as a refusal of the values below it."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{field_name}={value!r} is not a finite number; give a finite value")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _finite(f"{field_name}[{i}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _finite(f"{field_name}.{key}", item)


def _finite_fields(schema: Any, group: str) -> None:
    """Every float of a schema's fields finite (called first in each __post_init__, so a float
    field added later is covered without a range check of its own)."""
    for f in fields(schema):
        _finite(f"{group}.{f.name}", getattr(schema, f.name))


def _positive(field_name: str, value: Optional[float], allow_zero: bool = False) -> None:
    if value is None:
        return
    _finite(field_name, value)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field_name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


@dataclass
class ModelConfig:
    """A decoder's family and shape (suite/models: one package per family)."""

    name: str = "tiny"
    #: model family: gpt (GPT-3 style) or llama (RMSNorm, SwiGLU, RoPE, grouped-query attention)
    family: str = "gpt"
    #: transformer blocks
    n_layers: int = 2
    #: hidden size
    d_model: int = 64
    #: attention (query) heads; d_model must divide by it
    n_heads: int = 4
    #: key/value heads (grouped-query attention, llama); null = n_heads
    n_kv_heads: Optional[int] = None
    #: MLP hidden size; null = the family's rule (gpt: 4 d_model; llama: 8/3 d_model rounded up to 256)
    ffn_dim: Optional[int] = None
    #: tokens per sample
    seq_len: int = 64
    #: vocabulary size as trained (already padded to a multiple of 64 for the GPT shapes)
    vocab_size: int = 512
    #: the output head shares the token embedding's weights (llama; Llama 3.2 1B and 3B do)
    tie_embeddings: bool = False
    #: rotary position base (llama; Llama 3 uses 500000)
    rope_theta: float = 10000.0
    #: epsilon of the LayerNorms (gpt) or RMSNorms (llama)
    norm_eps: float = 1e-5
    #: size of each attention head (llama); null = d_model / n_heads (Qwen3: d 2048, 32 heads of 128)
    head_dim: Optional[int] = None
    #: RMSNorm on each query and key head before the rotary positions (llama; Qwen3 has it)
    qk_norm: bool = False
    #: mixture of experts (docs/models.md): routed experts per MLP through DeepSpeed-MoE;
    #: 0 or 1 = the dense MLP
    n_experts: int = 0
    #: experts each token is routed to (top-k)
    experts_per_token: int = 2
    #: hidden size of each (SwiGLU) expert; null = ffn_dim's rule
    moe_ffn_dim: Optional[int] = None
    #: shared experts every token passes through (DeepSeek, Qwen2-MoE): a dense SwiGLU of
    #: n_shared_experts x moe_ffn_dim added to the routed output
    n_shared_experts: int = 0
    #: each expert takes at most capacity_factor x k x tokens / n_experts tokens of a micro-batch
    capacity_factor: float = 1.0
    #: drop the routes past an expert's capacity (false: capacity = the busiest expert's load)
    drop_tokens: bool = True
    #: coefficient of the router's load-balancing loss, summed over layers, in the training loss
    aux_loss_coef: float = 0.01
    #: no random token selection nor sampled second expert, so that layouts route alike
    deterministic_routing: bool = True

    def __post_init__(self) -> None:
        _finite_fields(self, "model")
        from suite.models import family

        for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_dim", "seq_len",
                     "vocab_size", "rope_theta", "norm_eps", "head_dim", "experts_per_token",
                     "moe_ffn_dim", "capacity_factor"):
            _positive(f"model.{name}", getattr(self, name))
        for name in ("n_experts", "n_shared_experts", "aux_loss_coef"):
            _positive(f"model.{name}", getattr(self, name), allow_zero=True)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} must divide by model.n_heads={self.n_heads}"
            )
        family(self.family).check(self)


def deepspeed_overlap_comm(strategy: "StrategyConfig") -> bool:
    """The overlap_comm a ZeRO run has: the strategy's, or DeepSpeed's own default where it
    says nothing (DeepSpeed 0.19.8, runtime/zero/config.py overlap_comm_valid: true for stage
    3, false for stages 0-2)."""
    return strategy.overlap_comm if strategy.overlap_comm is not None else strategy.zero_stage == 3


#: what trains the model (StrategyConfig.engine), and the ZeRO stage each torch engine matches
ENGINES = ("deepspeed", "torch_ddp", "fsdp2")
ENGINE_ZERO_STAGE = {"torch_ddp": 0, "fsdp2": 3}


@dataclass
class StrategyConfig:
    """How the model is distributed: ZeRO stage, offload, DeepSpeed's tuning knobs, and the
    engine (DeepSpeed, or a PyTorch baseline)."""

    name: str = "ddp"
    #: ZeRO stage 0 (plain data parallel), 1, 2 or 3
    zero_stage: int = 0
    #: keep optimizer states on the CPU (ZeRO-Offload; stages 1-3)
    offload_optimizer: bool = False
    #: keep parameters on the CPU (ZeRO-Infinity style; stage 3 only)
    offload_params: bool = False
    #: elements per gradient reduce bucket
    reduce_bucket_size: int = 500_000_000
    #: elements per all-gather bucket (stages 1-2)
    allgather_bucket_size: int = 500_000_000
    #: overlap gradient reduction (and, stage 3, parameter gathers) with compute; null: what
    #: DeepSpeed does when its config says nothing (0.19.8: on for stage 3, off for 1-2;
    #: `deepspeed_overlap_comm`), so each engine runs as its users run it
    overlap_comm: Optional[bool] = None
    #: copy gradients into one contiguous buffer as they are produced
    contiguous_gradients: bool = True
    #: stage 3: elements fetched ahead of use
    stage3_prefetch_bucket_size: int = 50_000_000
    #: stage 3: parameters smaller than this stay unpartitioned
    stage3_param_persistence_threshold: int = 100_000
    #: stage 3: most parameters kept gathered at once
    stage3_max_live_parameters: int = 1_000_000_000
    #: stage 3: do not release a parameter reused within this many elements
    stage3_max_reuse_distance: int = 1_000_000_000
    #: tensor-parallel degree (DeepSpeed AutoTP: attention and MLP matmuls split across ranks)
    tensor_parallel: int = 1
    #: pipeline-parallel degree (the GPT as a deepspeed.pipe.PipelineModule, train_batch());
    #: micro-batches per pipeline step = train.grad_accum_steps
    pipeline_parallel: int = 1
    #: DeepSpeed-Ulysses sequence-parallel degree: each rank holds seq_len/sp tokens of every
    #: sample; attention all-to-alls trade the sequence slice for n_heads/sp whole heads
    sequence_parallel: int = 1
    #: expert-parallel degree (DeepSpeed-MoE's ep_size): each rank of an expert group holds
    #: n_experts / expert_parallel of every MoE layer's experts; tokens reach them by all-to-all
    expert_parallel: int = 1
    #: how layers are split into stages: parameters, uniform, or type:<regex>
    pipeline_partition_method: str = "parameters"
    #: ZeRO++ (stage 3, CUDA only): quantised weights (qwZ), quantised gradients (qgZ),
    #: hierarchical partitioning across this many ranks (hpZ; 1 = off)
    zero_quantized_weights: bool = False
    zero_quantized_gradients: bool = False
    zero_hpz_partition_size: int = 1
    #: MiCS sharding groups: DeepSpeed 0.19 removed MiCS and rejects the key, so only -1 (off)
    #: is accepted; the field stays so that an old sweep file gets this reason, not "unknown key"
    mics_shard_size: int = -1
    #: what trains the model: deepspeed (deepspeed.initialize), or a PyTorch baseline to
    #: compare with it on the same hardware: torch_ddp (torch's DistributedDataParallel; with
    #: zero_stage 0) or fsdp2 (torch's fully_shard per block, then the whole model; with
    #: zero_stage 3). docs/layouts.md, "PyTorch baselines"
    engine: str = "deepspeed"
    #: fsdp2 only: free each unit's gathered parameters after its forward pass and gather them
    #: again in backward (true: like ZeRO-3), or keep them until backward (false: like ZeRO-2,
    #: gradients and optimizer states sharded, parameters whole between forward and backward)
    fsdp_reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        _finite_fields(self, "strategy")
        _choice("strategy.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _choice("strategy.engine", self.engine, ENGINES)
        self._check_engine()
        _positive("strategy.tensor_parallel", self.tensor_parallel)
        _positive("strategy.pipeline_parallel", self.pipeline_parallel)
        _positive("strategy.sequence_parallel", self.sequence_parallel)
        _positive("strategy.expert_parallel", self.expert_parallel)
        _positive("strategy.zero_hpz_partition_size", self.zero_hpz_partition_size)
        if not (self.pipeline_partition_method in ("parameters", "uniform")
                or self.pipeline_partition_method.startswith("type:")):
            raise ConfigError(f"strategy.pipeline_partition_method={self.pipeline_partition_method!r} "
                              "is not allowed; choose parameters, uniform or type:<regex>")
        if self.mics_shard_size != -1:
            raise ConfigError(f"strategy.mics_shard_size={self.mics_shard_size}: MiCS was removed from "
                              "DeepSpeed (0.19 rejects zero_optimization.mics_shard_size); leave it -1, "
                              "or use strategy.zero_hpz_partition_size (ZeRO++ hierarchical partitioning)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("strategy.offload_optimizer=true needs strategy.zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("strategy.offload_params=true needs strategy.zero_stage=3")
        for name in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                     "stage3_max_live_parameters", "stage3_max_reuse_distance"):
            _positive(f"strategy.{name}", getattr(self, name))
        _positive("strategy.stage3_param_persistence_threshold",
                  self.stage3_param_persistence_threshold, allow_zero=True)

    def _check_engine(self) -> None:
        """The strategy fields a PyTorch baseline contradicts (those that concern other groups
        are checked in suite/plan.py, check_engine). Before the offload checks below, whose
        message ("needs zero_stage 1, 2 or 3") would send a torch_ddp user the wrong way."""
        if not self.fsdp_reshard_after_forward and self.engine != "fsdp2":
            raise ConfigError(f"strategy.fsdp_reshard_after_forward=false applies to "
                              f"strategy.engine=fsdp2 only, not {self.engine}; leave it true")
        if self.engine == "deepspeed":
            return
        stage = ENGINE_ZERO_STAGE[self.engine]
        if self.zero_stage != stage:
            raise ConfigError(
                f"strategy.engine={self.engine} needs strategy.zero_stage={stage}, not "
                f"{self.zero_stage}: the stage tells the memory model and the report what is "
                "sharded (torch DDP: nothing, as ZeRO-0; FSDP2: parameters, gradients and optimizer "
                "states, as ZeRO-3)")
        if self.offload_optimizer or self.offload_params:
            raise ConfigError(f"strategy.offload_optimizer/offload_params with strategy.engine="
                              f"{self.engine}: offload is DeepSpeed's (ZeRO-Offload); use "
                              "strategy.engine=deepspeed or leave both false")


OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adamw", "adagrad", "lamb")
SCHEDULERS = ("none", "warmup", "warmup_decay")
ADAM_IMPLEMENTATIONS = ("auto", "torch", "torch_fused", "deepspeed")


@dataclass
class OptimizerConfig:
    """Optimizer family, its settings and the learning-rate schedule."""

    name: str = "adamw"
    lr: float = 1e-4
    #: Adam/AdamW/Lamb moment decay rates
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    #: SGD momentum (0 for plain SGD)
    momentum: float = 0.0
    #: Adam/AdamW implementation: torch, torch_fused (torch's one-kernel AdamW), deepspeed
    #: (DeepSpeed's FusedAdam, or its CPU-Adam under ZeRO-Offload: ops compiled on first use,
    #: which needs nvcc and the CUDA headers on GPU nodes), or auto = torch_fused on GPUs
    #: (deepspeed under offload, as ZeRO-Offload is meant to run), torch on CPUs
    implementation: str = "auto"
    #: learning-rate schedule: none, warmup (linear to lr) or warmup_decay (then linear to 0)
    scheduler: str = "warmup"
    #: scheduler warm-up length in optimizer steps
    lr_warmup_steps: int = 2
    #: clip gradients to this global norm (0 = off). DeepSpeed clips at 1.0 when its config
    #: says nothing; the suite always writes it, so records show what ran
    gradient_clipping: float = 1.0

    def __post_init__(self) -> None:
        _finite_fields(self, "optimizer")
        _choice("optimizer.name", self.name, OPTIMIZERS)
        _choice("optimizer.scheduler", self.scheduler, SCHEDULERS)
        _choice("optimizer.implementation", self.implementation, ADAM_IMPLEMENTATIONS)
        _positive("optimizer.lr", self.lr)
        _positive("optimizer.eps", self.eps)
        _positive("optimizer.weight_decay", self.weight_decay, allow_zero=True)
        _positive("optimizer.lr_warmup_steps", self.lr_warmup_steps, allow_zero=True)
        _positive("optimizer.gradient_clipping", self.gradient_clipping, allow_zero=True)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optimizer.momentum={self.momentum} must be in [0, 1)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas={list(self.betas)} must be two values in [0, 1)")


PRECISIONS = ("fp32", "bf16", "fp16")
#: precision.name may also be "auto": bf16 on GPUs, fp32 on CPUs (the plan resolves it)
PRECISION_CHOICES = PRECISIONS + ("auto",)


@dataclass
class PrecisionConfig:
    """Training precision (DeepSpeed's bf16 / fp16 blocks)."""

    name: str = "fp32"
    #: fp16 only: 0 = dynamic loss scaling, else a fixed scale
    loss_scale: float = 0.0
    #: fp16 only: dynamic scaling starts at 2**initial_scale_power
    initial_scale_power: int = 16
    #: let fp32 matmuls and convolutions run in TF32 (torch's "high"); default IEEE fp32
    #: ("highest"), set in every run whatever the image allowed (docs/behaviour.md)
    tf32: bool = False

    def __post_init__(self) -> None:
        _finite_fields(self, "precision")
        _choice("precision.name", self.name, PRECISION_CHOICES)
        _positive("precision.loss_scale", self.loss_scale, allow_zero=True)


BACKENDS = ("local", "slurm")


@dataclass
class ClusterConfig:
    """Where the runs execute, with how many devices, and every sbatch knob a site needs."""

    name: str = "local"
    #: local (this machine, one run at a time) or slurm (job arrays through sbatch)
    scheduler: str = "local"
    #: nodes per run
    nodes: int = 1
    #: ranks (one per GPU) per node; null = every local GPU, or `cpu_ranks` without GPUs
    gpus_per_node: Optional[int] = None
    #: ranks per node on a machine without GPUs (gloo on the CPU)
    cpu_ranks: int = 2
    #: cpu, cuda, or auto = cuda where this machine sees a GPU, else cpu (local runs only: a
    #: Slurm sweep must say, since the login node's hardware says nothing of the compute nodes')
    accelerator: str = "auto"
    #: ask the scheduler for GPUs (null = where the accelerator is cuda); the local test
    #: cluster declares fake GPUs, so its runs ask for them while training on the CPU
    request_gpus: Optional[bool] = None
    #: wall-clock limit of one run, minutes (Slurm's --time)
    timeout_min: int = 20
    #: seconds for the start-up: all ranks arrive, then the model and the DeepSpeed engine are
    #: built; beyond it the suite's watchdog ends the run (torch's own timeout is set longer)
    init_timeout_s: int = 300
    #: environment variables set in every rank before torch.distributed starts (NCCL_*, ...)
    env: Dict[str, str] = field(default_factory=dict)
    #: Slurm: run on exactly these nodes (--nodelist, e.g. node[3-4]); submit.each_node sets it
    #: per run. A local run runs on this machine
    nodelist: Optional[str] = None
    #: Slurm: --partition, --account, --qos, --constraint
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    #: Slurm: --exclusive (no other job on the nodes; what a benchmark wants on a real cluster)
    exclusive: bool = False
    #: Slurm: --mem in GB per node; 0 = all of the node's memory (each rank builds its model
    #: in host memory first, which a site's small default per CPU may not hold)
    mem_gb: int = 0
    #: Slurm: CPU cores per rank (--cpus-per-task, passed to srun too: Slurm 22.05+ does not
    #: hand sbatch's value on, and a rank would get one core); also the rank's thread count
    cpus_per_task: int = 8
    #: Slurm: shell lines run in the batch script before srun (module loads, exports)
    setup: List[str] = field(default_factory=list)
    #: Slurm: any other sbatch option, e.g. {reservation: bench, mail-type: FAIL}
    sbatch_extra: Dict[str, str] = field(default_factory=dict)
    #: the site's GPUs per node (null = not checked): more in cluster.gpus_per_node is refused
    max_gpus_per_node: Optional[int] = None
    #: memory per GPU in GB (null = the smallest of the GPUs a local run uses, read through
    #: NVML; not checked for a Slurm GPU sweep): a run the memory model says will not fit is
    #: refused (docs/memory.md). Set on a CPU run, it is checked as each rank's device memory
    gpu_memory_gb: Optional[float] = None
    #: host memory per node in GB that a CPU run's ranks share (null = cluster.mem_gb on Slurm
    #: when set, or this machine's MemAvailable at planning for a local run; else not checked).
    #: Each rank is checked against its share (this / ranks per node) before anything starts,
    #: and limits its own memory to it (docs/memory.md)
    host_memory_gb: Optional[float] = None
    #: Slurm: most array tasks running at once (%N in --array)
    array_parallelism: int = 64
    #: Slurm: seconds before the time limit when the job is signalled (the run records
    #: `timeout` itself then)
    signal_delay_s: int = 60

    def __post_init__(self) -> None:
        _finite_fields(self, "cluster")
        _choice("cluster.scheduler", self.scheduler, BACKENDS)
        _positive("cluster.nodes", self.nodes)
        _positive("cluster.gpus_per_node", self.gpus_per_node)
        _positive("cluster.cpu_ranks", self.cpu_ranks)
        _positive("cluster.timeout_min", self.timeout_min)
        _positive("cluster.init_timeout_s", self.init_timeout_s)
        _positive("cluster.mem_gb", self.mem_gb, allow_zero=True)
        _positive("cluster.gpu_memory_gb", self.gpu_memory_gb)
        _positive("cluster.host_memory_gb", self.host_memory_gb)
        _positive("cluster.cpus_per_task", self.cpus_per_task)
        _positive("cluster.array_parallelism", self.array_parallelism)
        _positive("cluster.signal_delay_s", self.signal_delay_s, allow_zero=True)
        _choice("cluster.accelerator", self.accelerator, ("auto", "cpu", "cuda"))
        if self.scheduler == "local" and self.nodelist is not None:
            import socket

            if self.nodelist != socket.gethostname():
                raise ConfigError(f"cluster.nodelist={self.nodelist} needs cluster.scheduler=slurm; a "
                                  f"local run runs on this machine ({socket.gethostname()})")
        if self.scheduler == "local" and self.nodes != 1:
            raise ConfigError(f"cluster.nodes={self.nodes} needs cluster.scheduler=slurm; "
                              "a local run has 1 node")
        if self.scheduler == "slurm" and self.accelerator == "auto":
            raise ConfigError("cluster.accelerator=auto with cluster.scheduler=slurm: the machine "
                              "that submits cannot tell what the compute nodes have; set "
                              "cluster.accelerator=cuda (with cluster.gpus_per_node) or cpu")
        if self.scheduler == "slurm" and self.accelerator == "cuda" and self.gpus_per_node is None:
            raise ConfigError("cluster.gpus_per_node must be set for a Slurm GPU sweep "
                              "(cluster.accelerator=cuda): ranks per node = GPUs per node")


FAULTS = ("none", "raise", "nan", "oom", "kill", "hang", "slow")
CHECKPOINTING = ("none", "full", "partitioned", "cpu")


@dataclass
class TrainConfig:
    """Batch sizes and the timed loop."""

    #: samples per rank per forward pass
    micro_batch_size: int = 2
    #: micro-batches accumulated per optimizer step (pipeline: micro-batches in flight);
    #: null = 1, or derived from global_batch_size when that is set
    grad_accum_steps: Optional[int] = None
    #: samples per optimizer step; null = micro x accumulation x data-parallel degree. Set, it
    #: holds the global batch fixed across layouts (accumulation derived, or checked if set)
    global_batch_size: Optional[int] = None
    #: recompute activations in backward: none, full (torch checkpoint per block), partitioned
    #: (DeepSpeed's, activations partitioned across model-parallel ranks), cpu (DeepSpeed's,
    #: checkpoints kept in host memory)
    activation_checkpointing: str = "none"
    #: torch.compile the model (DeepSpeed's engine.compile, inductor); compilation happens in
    #: the first warm-up step, which is never timed
    compile: bool = False
    #: optimizer steps run before timing starts (not timed)
    warmup_steps: int = 3
    #: optimizer steps timed, each bracketed by device synchronisation
    timed_steps: int = 10
    #: seed of the weights and the synthetic tokens
    seed: int = 1234
    #: scaling study this run belongs to: none, weak (per-device micro-batch held fixed) or
    #: strong (global batch held fixed; set train.global_batch_size)
    scaling: str = "none"
    #: which repeat of the same configuration this run is (set by submit.repeats)
    repeat_index: int = 0
    #: count collective traffic with DeepSpeed's comms logger (it synchronises around every
    #: collective, so runs with it on are for the communication model, not for timings)
    profile_comms: bool = False
    #: loss-parity mode: the report compares this run's per-step losses with the plain data-
    #: parallel run of the same model, data and optimizer (conf/experiment/parity.yaml)
    check_parity: bool = False
    #: test-only fault injection: raise (an exception in the step), nan (non-finite loss),
    #: oom (an out-of-memory error, simulated; a real one on the CPU meets the rank's memory limit),
    #: kill (the rank SIGKILLs itself), hang (the rank stops making progress), slow (a
    #: straggler: the rank's forward passes take train.fault_slowdown longer, every step)
    fault: str = "none"
    #: the optimizer step (counting warm-up, from 0) at which the fault strikes
    fault_step: int = 1
    #: the rank the fault strikes (null = every rank); kill = SIGKILL, hang = sleep forever
    fault_rank: Optional[int] = None
    #: train.fault=slow: the fraction by which the slowed rank's forward passes take longer
    fault_slowdown: float = 1.0
    #: watchdog: a run in which no step completes for this long is ended and recorded `hang`
    step_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        _finite_fields(self, "train")
        _positive("train.micro_batch_size", self.micro_batch_size)
        _positive("train.grad_accum_steps", self.grad_accum_steps)
        _positive("train.global_batch_size", self.global_batch_size)
        _positive("train.warmup_steps", self.warmup_steps, allow_zero=True)
        _positive("train.timed_steps", self.timed_steps)
        _choice("train.fault", self.fault, FAULTS)
        _positive("train.fault_slowdown", self.fault_slowdown)
        _positive("train.step_timeout_s", self.step_timeout_s)
        _choice("train.activation_checkpointing", self.activation_checkpointing, CHECKPOINTING)
        _choice("train.scaling", self.scaling, ("none", "weak", "strong"))
        if self.compile and self.warmup_steps < 1:
            raise ConfigError("train.compile=true needs train.warmup_steps >= 1: the first step "
                              "compiles, and compilation must not be timed")
        if self.scaling == "strong" and self.global_batch_size is None:
            raise ConfigError("train.scaling=strong holds the global batch fixed: set train.global_batch_size")
        if self.scaling == "weak" and self.global_batch_size is not None:
            raise ConfigError("train.scaling=weak holds the micro-batch fixed: leave "
                              "train.global_batch_size null")


WORKLOADS = ("train", "gemm", "allreduce", "preflight")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")


@dataclass
class WorkloadConfig:
    """What a run measures: training the model, or a micro-benchmark of a ceiling."""

    #: train (training steps of the model; called gpt before model families), gemm (matrix-multiply TFLOP/s: the ceiling for MFU), allreduce
    #: (collective bandwidth: all_reduce, all_gather, reduce_scatter), preflight (both in one
    #: job: a node's acceptance figures, experiment=preflight)
    name: str = "train"
    #: gemm: square sizes n (n x n @ n x n) and dtypes
    gemm_sizes: List[int] = field(default_factory=lambda: [256, 512, 1024])
    gemm_dtypes: List[str] = field(default_factory=lambda: ["fp32"])
    #: allreduce: collectives and message sizes (bytes of the full buffer)
    collectives: List[str] = field(default_factory=lambda: list(COLLECTIVES))
    message_bytes: List[int] = field(default_factory=lambda: [2 ** 16, 2 ** 20, 2 ** 24])
    #: allreduce: also the strategy's reduce and all-gather bucket sizes (in the precision's bytes)
    include_bucket_sizes: bool = False
    warmup: int = 3
    iters: int = 10
    #: gemm/allreduce/preflight: every size is timed (iters calls) this many times, in rounds
    #: taken round-robin over all sizes; its figure is the median over rounds, and the rounds'
    #: spread is its noise inside the run (the preflight verdict's threshold uses it)
    rounds: int = 5

    def __post_init__(self) -> None:
        _finite_fields(self, "workload")
        _choice("workload.name", self.name, WORKLOADS)
        for dtype in self.gemm_dtypes:
            _choice("workload.gemm_dtypes[]", dtype, PRECISIONS)
        for op in self.collectives:
            _choice("workload.collectives[]", op, COLLECTIVES)
        for name in ("warmup", "iters", "rounds"):
            _positive(f"workload.{name}", getattr(self, name), allow_zero=name == "warmup")
        for name in ("gemm_sizes", "gemm_dtypes", "collectives", "message_bytes"):
            if not getattr(self, name):
                raise ConfigError(f"workload.{name} is empty; give at least one value")
        for i, n in enumerate(self.gemm_sizes):
            if n < 1:
                raise ConfigError(f"workload.gemm_sizes[{i}]={n} must be >= 1 (n of an n x n matrix)")
        for i, size in enumerate(self.message_bytes):
            if size < 4:
                raise ConfigError(f"workload.message_bytes[{i}]={size} must be >= 4 (one fp32 element)")


@dataclass
class DataConfig:
    """Where the tokens come from: made on the device (synthetic), or read from disk (tokens)."""

    #: synthetic (random tokens made on the device before timing) or tokens (a memory-mapped
    #: file of token ids read through a DataLoader with workers, inside the timed steps)
    name: str = "synthetic"
    #: tokens: the file of token ids (python -m suite.workload.data writes one)
    path: Optional[str] = None
    #: tokens: uint16 or uint32
    token_dtype: str = "uint16"
    #: tokens: DataLoader worker processes per rank
    workers: int = 2

    def __post_init__(self) -> None:
        _finite_fields(self, "data")
        _choice("data.name", self.name, ("synthetic", "tokens"))
        _choice("data.token_dtype", self.token_dtype, ("uint16", "uint32"))
        _positive("data.workers", self.workers, allow_zero=True)
        if self.name == "tokens" and not self.path:
            raise ConfigError("data=tokens needs data.path (a file of token ids)")


@dataclass
class SubmitConfig:
    """How a sweep is submitted; not part of any run's config (nor of its config hash)."""

    #: print each run's axes and the sbatch script, start nothing
    dry_run: bool = False
    #: wait for every run and build the report (false: submit, print job ids, return; Slurm)
    wait: bool = True
    #: run configurations that already have an ok record in the sweep folder again
    force: bool = False
    #: run every configuration this many times (separate jobs, train.repeat_index 0..k-1)
    repeats: int = 1
    #: record invalid points as `invalid` records and run the rest (default: refuse the sweep)
    skip_invalid: bool = False
    #: run points the memory model says cannot fit (GPU memory, or host memory per rank on the
    #: CPU) anyway; a CPU rank still limits its memory to its share, so such a run ends `oom`
    try_anyway: bool = False
    #: run every 1-node point once on each node that is up (cluster.nodelist set per run; Slurm:
    #: the partition's idle, mixed or allocated nodes): the cluster acceptance check
    #: (experiment=preflight) compares the nodes
    each_node: bool = False

    def __post_init__(self) -> None:
        _finite_fields(self, "submit")
        _positive("submit.repeats", self.repeats)


@dataclass
class ReportConfig:
    """What the end-of-sweep report does; not part of any run's config."""

    #: build the report when the sweep ends
    enabled: bool = True
    #: a Parquet dataset of earlier sweeps (one partition per sweep date): the sweep is
    #: compared against it and appended to it; null = no history
    history_dir: Optional[str] = None
    #: exit non-zero when a configuration regressed against the history
    fail_on_regression: bool = False
    #: nights of history a configuration's baseline is taken from
    window: int = 7
    #: a drop counts as a regression only beyond this fraction of the baseline ...
    min_drop: float = 0.05
    #: ... and beyond this many robust standard deviations (1.4826 x MAD) of the history
    noise_sigmas: float = 3.0
    #: ... but a drop beyond this fraction (or min_drop, if larger) is a regression however
    #: noisy the history (a MAD of two or three nights can exceed the baseline itself)
    max_allowed_drop: float = 0.5
    #: a configuration whose step times (within a run) or repeats (tokens/s across runs) vary
    #: by a coefficient of variation above this is flagged too noisy to compare, saying which
    max_cv: float = 0.05
    #: a run's slowest rank is a straggler when its forward pass takes longer than the median
    #: of the other ranks' by more than this fraction ...
    straggler_min_excess: float = 0.30
    #: ... and by more than this many times the run's noise (the larger of its step-time CV
    #: and its ranks' median forward-time CV across steps)
    straggler_noise_sigmas: float = 3.0
    #: preflight: a node below the median of the other nodes by more than this fraction ...
    preflight_tolerance: float = 0.10
    #: ... and by more than this many times the figure's noise across repeated runs is flagged
    preflight_noise_sigmas: float = 3.0
    #: a memory measurement outside [lower, upper] x the analytic model is flagged
    memory_ratio_bounds: List[float] = field(default_factory=lambda: [0.9, 4.0])
    #: what decides a nightly regression: otava (Apache Otava's E-Divisive with t-tests over a
    #: configuration's nights; bench/changepoint_error_rates.py: the closer of the two to the
    #: targets) or median_mad (the rule above over the last `window` nights); both are shown
    change_method: str = "otava"
    #: Otava: its split step's sliding window (nights) ...
    otava_window: int = 30
    #: ... the largest p-value of a change point's t-test ...
    otava_max_pvalue: float = 0.0005
    #: ... the smallest relative change a change point must have ...
    otava_min_magnitude: float = 0.04
    #: ... the fewest nights Otava judges a configuration on (fewer: the median/MAD rule does)
    otava_min_nights: int = 6

    def __post_init__(self) -> None:
        _finite_fields(self, "report")
        _positive("report.window", self.window)
        _choice("report.change_method", self.change_method, ("otava", "median_mad"))
        for name in ("otava_window", "otava_min_nights"):
            _positive(f"report.{name}", getattr(self, name))
        for name in ("otava_max_pvalue", "otava_min_magnitude"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"report.{name}={getattr(self, name)} must be a fraction in [0, 1)")
        for name in ("noise_sigmas", "max_cv", "straggler_min_excess", "straggler_noise_sigmas",
                     "preflight_noise_sigmas"):
            _positive(f"report.{name}", getattr(self, name), allow_zero=True)
        for name in ("min_drop", "max_allowed_drop", "preflight_tolerance"):  # fractions of a figure
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"report.{name}={value} must be a fraction in [0, 1)")
        bounds = self.memory_ratio_bounds
        if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
            raise ConfigError(f"report.memory_ratio_bounds={list(bounds)} must be [lower, upper] "
                              "with 0 < lower < upper")


@dataclass
class SuiteConfig:
    """The root config: one run of the benchmark."""

    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="suite_schema", node=SuiteConfig)
    for group, schema in (("model", ModelConfig), ("strategy", StrategyConfig),
                          ("optimizer", OptimizerConfig), ("precision", PrecisionConfig),
                          ("cluster", ClusterConfig), ("train", TrainConfig),
                          ("workload", WorkloadConfig), ("data", DataConfig)):
        cs.store(group=group, name=f"{group}_schema", node=schema)


register_configs()
