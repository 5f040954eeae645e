"""Per-device memory model of a training run: model states (suite.metrics.model_state_memory),
activations, the logits and loss, the ZeRO / DDP / FSDP buffers, and an allocator allowance
on top. Pure Python (no torch at import): planning and the report can call it. Every term is
bytes on one device at the step's peak; docs/memory.md gives the formulas and what is left out.

What a block keeps for backward comes from its family (`activation_elements(m)` in
suite/models/<family>/__init__.py), measured against torch's saved tensors in
tests/test_memory.py; this module scales it by tokens, layers and the parallel layout.

At its end: host memory per rank on the CPU (host_memory_per_rank), the limit a CPU rank sets
on itself (rank_memory_limit), and the only functions here that read the machine or files:
this machine's memory (read_local_memory: /proc/meminfo, NVML) and the model presets."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, List, Optional, Tuple

from suite import models
from suite.metrics import model_state_memory

#: Headroom on top of the predicted bytes: the CUDA caching allocator rounds every block up
#: (to 512 B, and large ones to 2 MiB segments) and cannot always reuse a freed block for a
#: larger request, so what it reserves runs some 5-15% above the bytes it hands out
#: (max_memory_reserved vs max_memory_allocated); 10% covers that and the small transients
#: the model does not list (gradients in flight through one layer, kernel workspaces).
ALLOCATOR_ALLOWANCE = 0.10

#: Device memory outside torch's allocator, so outside max_memory_allocated: the CUDA context
#: with torch's kernels loaded (about 0.5 GiB on Hopper with lazy loading) and NCCL's own
#: communicator buffers. 1 GiB per GPU; not counted on the CPU.
CUDA_CONTEXT_BYTES = 1 << 30

#: DeepSpeed's engine flattens stage-0 gradients for its all-reduce in buckets of this many
#: elements (engine.MEMORY_OPT_ALLREDUCE_SIZE)
STAGE0_ALLREDUCE_BUCKET = 500_000_000

#: torch DDP's bucket_cap_mb default (the first bucket is 1 MiB)
DDP_BUCKET_BYTES = 25 * 2 ** 20

#: cross-entropy's peak per logit, in bytes, whatever the precision (measured in
#: tests/test_memory.py): in backward, log_softmax's kept fp32 output, the fp32 gradient
#: nll_loss hands it and the fp32 gradient it returns are alive together, 3 x 4 bytes. The
#: forward peak is lower: bf16 logits (2) + their fp32 copy (4) + log_softmax's output (4);
#: in fp32 the copy is the logits themselves (4 + 4).
LOSS_BYTES_PER_LOGIT = 12

#: the targets nll_loss keeps: int64, one per token
TARGET_BYTES_PER_TOKEN = 8

#: DeepSpeed partitions checkpointed block inputs (train.activation_checkpointing=partitioned)
#: over the model-parallel group of the mpu given to deepspeed.checkpointing.configure;
#: suite/workload/train.py gives none, so its mp_size stays 1 and each input is kept whole
#: (as a clone). Were an mpu passed, this would be the tensor-parallel degree.
CHECKPOINT_PARTITION_DEGREE = 1

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
CHECKPOINT_MODES = ("none", "full", "partitioned", "cpu")
ENGINES = ("deepspeed", "torch_ddp", "fsdp2")


def _dtype_bytes(precision: str) -> int:
    if precision not in PRECISION_BYTES:
        raise ValueError(f"precision={precision!r}: expected one of {list(PRECISION_BYTES)}")
    return PRECISION_BYTES[precision]


def block_bytes_per_token(m: Any, precision: str, tensor_parallel: int = 1,
                          accelerator: str = "cuda") -> float:
    """Bytes one block keeps per token (its per-position terms excluded): each activation-dtype
    term at the precision's width, each fp32 term at 4, the head/ffn-split ones over the TP
    degree."""
    terms = models.family(m.family).activation_elements(m, accelerator)
    split = set(terms["split_by_tensor_parallel"])

    def total(group: Dict[str, int]) -> float:
        return sum(n / tensor_parallel if name in split else n for name, n in group.items())

    return total(terms["activation"]) * _dtype_bytes(precision) + total(terms["fp32"]) * 4


def block_bytes_per_position(m: Any, accelerator: str = "cuda") -> float:
    """Bytes one block keeps per sequence position, shared by the micro-batch (RoPE's tables)."""
    terms = models.family(m.family).activation_elements(m, accelerator)
    return sum(terms["fp32_per_position"].values()) * 4


def activation_bytes(m: Any, micro_batch: int, precision: str, checkpointing: str,
                     tensor_parallel: int = 1, sequence_parallel: int = 1, pipeline_parallel: int = 1,
                     *, micro_batches_in_flight: Optional[int] = None,
                     accelerator: str = "cuda") -> float:
    """Bytes the blocks keep for backward on one device at the step's peak.

    Tokens per rank: micro_batch x seq_len / sequence_parallel (Ulysses: every tensor outside
    attention holds a slice of the sequence, and inside it all of the sequence for
    n_heads / sp heads: the same count). Tensor parallel divides the per-head and MLP terms
    and replicates the rest (the family's split_by_tensor_parallel).

    Pipeline parallel: a stage holds ceil(n_layers / pp) blocks (the largest stage) and, under
    1F1B, the first stage has `micro_batches_in_flight` micro-batches forwarded but not yet
    backwarded (default pp; DeepSpeed's schedule keeps min(pp, accumulation steps)); each also
    keeps the stage's output tensor for its backward (d_model per token).

    checkpointing: none keeps every block's tensors; full (torch checkpoint), partitioned
    (DeepSpeed's, divided by CHECKPOINT_PARTITION_DEGREE) and cpu (DeepSpeed's, moved to host:
    0 here) keep only each block's input, d_model per token, plus one block's whole set while
    it is recomputed in backward."""
    if checkpointing not in CHECKPOINT_MODES:
        raise ValueError(f"checkpointing={checkpointing!r}: expected one of {list(CHECKPOINT_MODES)}")
    a = _dtype_bytes(precision)
    positions = m.seq_len / sequence_parallel
    tokens = micro_batch * positions
    layers = math.ceil(m.n_layers / pipeline_parallel)
    in_flight = pipeline_parallel if micro_batches_in_flight is None else micro_batches_in_flight
    per_block = (tokens * block_bytes_per_token(m, precision, tensor_parallel, accelerator)
                 + positions * block_bytes_per_position(m, accelerator))
    if sequence_parallel > 1:
        # DeepSpeed-Ulysses: the all-to-all gives the output projection a new tensor, while
        # SDPA keeps its own output (read from deepspeed/sequence/layer.py, not measured)
        per_block += tokens * m.d_model * a
    if checkpointing == "none":
        kept = layers * per_block * in_flight
    else:
        block_input = {"full": 1.0, "partitioned": 1.0 / CHECKPOINT_PARTITION_DEGREE, "cpu": 0.0}
        kept = layers * in_flight * tokens * m.d_model * a * block_input[checkpointing] + per_block
    if pipeline_parallel > 1:
        kept += in_flight * tokens * m.d_model * a  # the stage's output, held for its backward
    return float(kept)


def logits_bytes(m: Any, micro_batch: int, precision: str, tensor_parallel: int = 1,
                 sequence_parallel: int = 1, *, accelerator: str = "cuda") -> float:
    """Bytes of the head and the loss at their peak (the start of backward), per device: the
    final norm's and the output projection's kept inputs (the family's head terms), the int64
    targets, and LOSS_BYTES_PER_LOGIT per logit (micro_batch x seq / sp tokens x vocab). The
    output head is replicated under tensor parallelism (neither family's TP_PARTITION splits
    it), so `tensor_parallel` changes nothing; the head lives on the last pipeline stage,
    one micro-batch at a time."""
    del tensor_parallel  # the vocabulary is not split over TP ranks
    terms = models.family(m.family).activation_elements(m, accelerator)
    tokens = micro_batch * m.seq_len / sequence_parallel
    head = (sum(terms["head_activation"].values()) * _dtype_bytes(precision)
            + sum(terms["head_fp32"].values()) * 4)
    return float(tokens * (head + TARGET_BYTES_PER_TOKEN + LOSS_BYTES_PER_LOGIT * m.vocab_size))


def _engine(strategy: Any) -> str:
    engine = getattr(strategy, "engine", "deepspeed")
    if engine not in ENGINES:
        raise ValueError(f"strategy.engine={engine!r}: expected one of {list(ENGINES)}")
    return engine


def buffer_bytes(strategy: Any, precision: str, n_params_per_rank: float, *,
                 largest_unit_params: Optional[float] = None,
                 matmul_params: Optional[float] = None) -> float:
    """Communication buffers the engine allocates on the device, beyond the model states.
    `n_params_per_rank`: the parameters of this rank's model replica (total / (tp x pp)),
    not divided by ZeRO. Gradients are reduced in the model's dtype (DeepSpeed's
    communication_data_type and gradient accumulation dtype default to it).

    DeepSpeed (deepspeed/runtime/engine.py, zero/stage_1_and_2.py, zero/stage3.py):
    - stage 0: the all-reduce flattens the gradients into one tensor per bucket of
      MEMORY_OPT_ALLREDUCE_SIZE = 5e8 elements: min(params, 5e8) (bf16 pipelines reduce the
      fp32 gradients of DeepSpeed's BF16 optimizer);
    - stages 1 and 2: with contiguous_gradients, setup_buckets allocates reduce_bucket_size
      elements at once (torch.empty, not capped by the model's size), a second buffer with
      overlap_comm; without it the bucket's gradients are flattened when reduced:
      min(reduce_bucket_size, params);
    - stage 3: the reduce bucket, allocated at start-up (reduce_bucket_size, or the
      flattening min(...) without contiguous_gradients), plus the parameters gathered at
      once, assumed min(stage3_max_live_parameters, params): DeepSpeed keeps a gathered
      parameter while it is reused within stage3_max_reuse_distance (1e9 by default, so a
      model under ~5e8 parameters stays gathered from its forward to its backward) and
      prefetches while fewer than max_live are gathered.

    torch DDP: no buckets of its own. They (bucket_cap_mb = 25 MiB, the first 1 MiB) are built
    with gradient_as_bucket_view=True, so each parameter's .grad is a view into its bucket and
    the buckets are the gradients model_state_bytes already counts (without it, a second
    copy). In bf16 the suite runs DDP with fp32 weights under autocast, whose bf16 copy of each
    matmul weight is kept by that matmul for backward: 2 bytes x `matmul_params` (default: all
    of the replica's parameters; predict_memory passes the non-embedding ones).

    FSDP2: one fully_shard unit's all-gathered parameters in the compute dtype (the largest
    unit: a block, or the root with the embedding and head), x 2 for the next unit's prefetch;
    `largest_unit_params` defaults to the whole replica when not given. With
    strategy.fsdp_reshard_after_forward=false every unit stays gathered from its forward to its
    backward: the whole replica in the compute dtype."""
    engine = _engine(strategy)
    p = _dtype_bytes(precision)
    n = float(n_params_per_rank)
    if engine == "torch_ddp":
        if precision == "fp32":
            return 0.0
        return 2.0 * (n if matmul_params is None else float(matmul_params))
    if engine == "fsdp2":
        if not getattr(strategy, "fsdp_reshard_after_forward", True):
            return n * p
        unit = n if largest_unit_params is None else float(largest_unit_params)
        return 2.0 * min(unit, n) * p
    stage = strategy.zero_stage
    if stage == 0:
        grad_bytes = 4 if precision == "bf16" and getattr(strategy, "pipeline_parallel", 1) > 1 else p
        return min(n, STAGE0_ALLREDUCE_BUCKET) * grad_bytes
    bucket = float(strategy.reduce_bucket_size)
    if stage in (1, 2):
        if not strategy.contiguous_gradients:
            return min(bucket, n) * p
        return bucket * p * (2 if strategy.overlap_comm else 1)
    reduce = bucket * p if strategy.contiguous_gradients else min(bucket, n) * p
    gathered = min(float(strategy.stage3_max_live_parameters), n) * p
    return reduce + gathered


def largest_unit_params(m: Any) -> int:
    """Parameters of the largest FSDP2 unit: one block, or the root (everything outside the
    blocks: embeddings, final norm, output head), from the family's parameter count."""
    one, two = (models.param_count(dataclasses.replace(m, n_layers=k))["total"] for k in (1, 2))
    block = two - one
    return max(block, models.param_count(m)["total"] - m.n_layers * block)


#: fp32: a rank builds its model's weights in fp32 (torch's default dtype) before the engine
#: casts or shards them
BUILD_BYTES_PER_PARAM = 4


def build_bytes(cfg: Any, plan: Any) -> float:
    """Bytes of the weights a rank builds before its engine shards or casts them, in fp32, on
    its device (on GPUs the GPU, on the CPU the host), at the build's peak:

    - DeepSpeed ZeRO stages 0-2, tensor parallel included, and torch DDP: the whole model
      (AutoTP partitions a model built whole inside deepspeed.initialize; the others build on
      the device, suite/workload/train.py _build_context and torch_engine.build);
    - pipeline parallel: the stage's share (total / pp; each stage builds its own layers);
    - DeepSpeed ZeRO-3: 0, zero.Init partitions each layer as it is built;
    - FSDP2: built on the meta device and sharded there, then only this rank's shards are
      materialised: the fp32 shards (total / sharding ranks) plus one whole parameter, the
      largest (drawn on the host and handed to distribute_tensor, which moves it to the
      device before it keeps this rank's shard).
    The peak of a run is the larger of this and the training terms (predict_memory,
    host_memory_per_rank): the build is over before training allocates anything."""
    m, s = cfg.model, cfg.strategy
    engine = _engine(s)
    total = models.param_count(m)["total"]
    if engine == "fsdp2":
        largest = models.family(m.family).largest_layer_params(m)
        return float((total / plan.sharding_size + largest) * BUILD_BYTES_PER_PARAM)
    if engine == "deepspeed" and s.zero_stage == 3:
        return 0.0
    return float(total * BUILD_BYTES_PER_PARAM / plan.pipeline_parallel)


def state_groups(cfg: Any, plan: Any) -> List[Tuple[int, int]]:
    """(parameters a rank holds, ranks ZeRO shards their states over) per group: a dense model
    is one group, the whole model over the data-parallel ranks. A mixture of experts under
    expert parallelism ep: the dense parameters over the data-parallel ranks, and the rank's
    1/ep of the routed experts over the expert-data-parallel group, dp / ep ranks
    (DeepSpeed-MoE's expert groups; suite.models.moe.params_per_rank)."""
    from suite.models import moe

    m, ep = cfg.model, max(1, getattr(cfg.strategy, "expert_parallel", 1))
    if not moe.is_moe(m):
        return [(models.param_count(m)["total"], plan.sharding_size)]
    per_rank = moe.params_per_rank(m, ep)
    return [(per_rank["dense"], plan.sharding_size), (per_rank["expert"], max(1, plan.sharding_size // ep))]


def moe_dispatch_bytes(m: Any, micro_batch: int, precision: str, sp: int = 1) -> float:
    """DeepSpeed-MoE's dispatch and combine tensors kept for backward, per MoE layer: each
    (n_experts, capacity, d_model), capacity = ceil(capacity_factor x k x tokens / n_experts)
    for the rank's tokens of a micro-batch (sharded_moe.py _capacity; dropless routing sizes it
    by the busiest expert, counted here at its balanced share, capacity factor 1: an allowance,
    not a bound). 0 for a dense model."""
    from suite.models import moe

    if not moe.is_moe(m):
        return 0.0
    tokens = micro_batch * m.seq_len / sp
    factor = m.capacity_factor if m.drop_tokens else 1.0
    capacity = math.ceil(factor * m.experts_per_token * tokens / m.n_experts)
    return float(m.n_layers * 2 * m.n_experts * capacity * m.d_model * (4 if precision == "fp32" else 2))


def predict_memory(cfg: Any, plan: Any) -> Dict[str, float]:
    """Predicted bytes per device for the run `plan` of config `cfg` (suite.config.SuiteConfig,
    suite.plan.RunPlan): model_state_bytes, activation_bytes, logits_bytes, buffer_bytes,
    predicted_bytes (their sum: the training peak), build_bytes (the weights built before the
    engine shards or casts them: build_bytes) and required_bytes = max(predicted, build) x
    (1 + ALLOCATOR_ALLOWANCE) (+ CUDA_CONTEXT_BYTES on cuda), to compare with the device's
    memory.

    The four terms are summed as if their peaks coincided. They nearly do without
    checkpointing (the loss's backward peak comes while every block's tensors are kept); with
    it, the one block being recomputed and the loss's peak come at different moments, and the
    stage-0 all-reduce runs after backward, so the sum leans high there."""
    m, s = cfg.model, cfg.strategy
    engine = _engine(s)
    tp, pp, sp = plan.tensor_parallel, plan.pipeline_parallel, plan.sequence_parallel
    total = models.param_count(m)["total"]
    zero_stage = {"deepspeed": s.zero_stage, "torch_ddp": 0, "fsdp2": 3}[engine]
    states = sum(model_state_memory(
        n_params=n, precision=plan.precision, optimizer=cfg.optimizer.name,
        zero_stage=zero_stage, dp=group, model_parallel=tp * pp,
        offload_optimizer=s.offload_optimizer, offload_params=s.offload_params,
    )["model_state_bytes_predicted"] for n, group in state_groups(cfg, plan))
    accelerator = "cuda" if plan.accelerator == "cuda" else "cpu"
    in_flight = min(pp, plan.grad_accum_steps) if pp > 1 else 1
    activations = activation_bytes(m, plan.micro_batch_size, plan.precision,
                                   cfg.train.activation_checkpointing, tp, sp, pp,
                                   micro_batches_in_flight=in_flight, accelerator=accelerator)
    logits = logits_bytes(m, plan.micro_batch_size, plan.precision, tp, sp, accelerator=accelerator)
    unit = largest_unit_params(m) / tp if engine == "fsdp2" else None
    matmul = models.param_count(m)["non_embedding"] / (tp * pp)
    buffers = buffer_bytes(s, plan.precision, total / (tp * pp), largest_unit_params=unit,
                           matmul_params=matmul)
    activations += moe_dispatch_bytes(m, plan.micro_batch_size, plan.precision, sp)
    predicted = states + activations + logits + buffers
    build = build_bytes(cfg, plan)
    required = (max(predicted, build) * (1 + ALLOCATOR_ALLOWANCE)
                + (CUDA_CONTEXT_BYTES if accelerator == "cuda" else 0))
    return {"model_state_bytes": float(states), "activation_bytes": activations,
            "logits_bytes": logits, "buffer_bytes": buffers,
            "predicted_bytes": predicted, "build_bytes": build, "required_bytes": required}


# --- host memory on the CPU --------------------------------------------------------------------
# On the CPU accelerator a rank's "device" is the host: what predict_memory counts for a device
# lives in host memory, and so does what offload would move off a GPU. The check below is the
# one the plan makes for CPU runs (suite.plan.memory_need); the readers after it are the only
# code here that reads the machine (the launcher calls them once per sweep, at planning time).

#: What a CPU rank holds besides its model: the interpreter with torch, DeepSpeed, submitit
#: and Hydra imported, gloo's process group, and what the engine loads later. Measured on the
#: default sweep (torch 2.13 CPU, DeepSpeed 0.19.8, 2 ranks): 0.25 GiB resident when the
#: process group is up, 0.35 GiB at the peak of a plain data-parallel run of the tiny GPT
#: (whose own terms are 6 MiB); counted as 0.5 GiB (docs/memory.md).
CPU_RANK_RUNTIME_BYTES = 1 << 29

def host_memory_per_rank(cfg: Any, plan: Any) -> Dict[str, float]:
    """Host memory one rank of a CPU run (plan.accelerator cpu) needs at its peak: the terms of
    predict_memory with nothing offloaded (offloaded optimizer states and parameters, and `cpu`
    activation checkpoints, stay in the same host memory: offload frees nothing on the CPU), the
    larger of that and the fp32 weights built before the engine shards them (build_bytes), with
    ALLOCATOR_ALLOWANCE on top, plus CPU_RANK_RUNTIME_BYTES.

    Returns predict_memory's keys (for the host: model states counted without offload) and
    build_bytes, runtime_bytes, required_bytes."""
    s, t = cfg.strategy, cfg.train
    host_cfg = cfg
    if s.offload_optimizer or s.offload_params or t.activation_checkpointing == "cpu":
        host_cfg = dataclasses.replace(
            cfg, strategy=dataclasses.replace(s, offload_optimizer=False, offload_params=False),
            train=dataclasses.replace(t, activation_checkpointing="partitioned"
                                      if t.activation_checkpointing == "cpu" else t.activation_checkpointing))
    need = predict_memory(host_cfg, dataclasses.replace(plan, accelerator="cpu"))
    build = build_bytes(cfg, plan)
    peak = max(need["predicted_bytes"], build)
    return {**need, "build_bytes": build, "runtime_bytes": float(CPU_RANK_RUNTIME_BYTES),
            "required_bytes": peak * (1 + ALLOCATOR_ALLOWANCE) + CPU_RANK_RUNTIME_BYTES}


@dataclasses.dataclass(frozen=True)
class LocalMemory:
    """What the machine that plans a local sweep has, read once at planning time
    (read_local_memory). None where it could not be read."""

    #: /proc/meminfo MemTotal and MemAvailable
    host_total_bytes: Optional[int] = None
    host_available_bytes: Optional[int] = None
    #: the smallest total memory among the GPUs a local run would use, and its name (NVML)
    gpu_bytes: Optional[int] = None
    gpu_name: Optional[str] = None


def parse_meminfo(text: str) -> Dict[str, int]:
    """/proc/meminfo (or /proc/self/status) as {field: bytes}, for the fields given in kB."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * 1024
    return out


def gpu_memory(nvml: Any, visible: Optional[str], device_order: Optional[str] = None
               ) -> Optional[Tuple[int, str]]:
    """(bytes, name) of the smallest GPU a local run would use, from NVML's total memory per
    device (NVML creates no CUDA context, so the launcher holds no GPU memory during the sweep);
    None where NVML cannot say. `visible`: CUDA_VISIBLE_DEVICES. Its UUIDs select those
    devices; its indices select NVML's devices of those indices only under
    CUDA_DEVICE_ORDER=PCI_BUS_ID (NVML's order; CUDA's default order is fastest first), else
    every GPU is considered, which is the same on a machine of one GPU model."""
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        count = nvml.nvmlDeviceGetCount()
        entries = None if visible is None else [e.strip() for e in visible.split(",") if e.strip()]
        if entries is not None and not entries:
            return None  # CUDA_VISIBLE_DEVICES="": no GPU for the runs
        if entries is None or (all(e.isdigit() for e in entries) and device_order != "PCI_BUS_ID"):
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        else:
            handles = [nvml.nvmlDeviceGetHandleByIndex(int(e)) if e.isdigit()
                       else nvml.nvmlDeviceGetHandleByUUID(e) for e in entries]
        if not handles:
            return None
        sizes = [(int(nvml.nvmlDeviceGetMemoryInfo(h).total), nvml.nvmlDeviceGetName(h)) for h in handles]
        size, name = min(sizes, key=lambda s: s[0])
        return size, name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # an index or UUID NVML does not know, a MIG instance, a driver error
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def read_local_memory(query_gpus: bool, meminfo: str = "/proc/meminfo") -> LocalMemory:
    """This machine's host memory and, with `query_gpus`, its GPUs' (NVML, nvidia-ml-py)."""
    import os

    try:
        with open(meminfo) as f:
            info = parse_meminfo(f.read())
    except OSError:  # not Linux: not checked
        info = {}
    gpu = None
    if query_gpus:
        try:
            import pynvml
        except ImportError:
            pynvml = None
        if pynvml is not None:
            gpu = gpu_memory(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER"))
    return LocalMemory(host_total_bytes=info.get("MemTotal"), host_available_bytes=info.get("MemAvailable"),
                       gpu_bytes=None if gpu is None else gpu[0], gpu_name=None if gpu is None else gpu[1])


def kernel_counts_mmap_as_data(release: str) -> bool:
    """Linux counts private writable mappings (mmap, not only brk) against RLIMIT_DATA since
    4.7; before that only the heap, which torch's large tensors (mmap) bypass."""
    import re

    found = re.match(r"(\d+)\.(\d+)", release)
    return found is not None and (int(found.group(1)), int(found.group(2))) >= (4, 7)


def rank_memory_limit(share_bytes: float, status: Dict[str, int], kernel_release: str) -> Tuple[str, int]:
    """(resource name, limit in bytes) that holds a CPU rank to `share_bytes` of host memory
    from this point on: what it already maps, plus what its share leaves beyond what it already
    holds resident (share - VmRSS, at least 0). RLIMIT_DATA (against VmData: private writable
    mappings, which is where tensors and the heap live; shared libraries and reserved but
    unusable address space do not count) where the kernel counts mmap in it, else RLIMIT_AS
    (against VmSize, every mapping). `status`: /proc/self/status as parse_meminfo reads it."""
    budget = max(float(share_bytes) - status["VmRSS"], 0.0)
    if kernel_counts_mmap_as_data(kernel_release):
        return "RLIMIT_DATA", int(status["VmData"] + budget)
    return "RLIMIT_AS", int(status["VmSize"] + budget)


def model_presets(conf_dir: Optional[str] = None) -> Dict[str, Any]:
    """The model presets of conf/model (name -> ModelConfig), for the plan's "a smaller model
    would fit" (read once; {} where the folder is not there, as in an installed copy)."""
    from pathlib import Path

    folder = Path(conf_dir) if conf_dir else Path(__file__).resolve().parent.parent / "conf" / "model"
    return dict(_presets(str(folder)))


@functools.lru_cache(maxsize=None)
def _presets(folder: str) -> Tuple[Tuple[str, Any], ...]:
    from pathlib import Path

    import yaml

    from suite.config import ModelConfig

    found = []
    for path in sorted(Path(folder).glob("*.yaml")):
        fields = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
        try:
            found.append((path.stem, ModelConfig(**fields)))
        except (TypeError, ValueError):  # not a plain preset: skipped, not guessed
            continue
    return tuple(found)
