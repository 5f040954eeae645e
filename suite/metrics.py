"""Pure metric formulas: step-time statistics, throughput,
TFLOP/s, MFU/HFU against a datasheet peak table. Plain numbers in, plain numbers out.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence

from suite import models

# Dense (non-sparse) datasheet peaks in TFLOP/s per device; vendors print tensor rates "with
# sparsity", twice these. fp32 is the plain (non-tensor-core) rate, which every run gets unless
# precision.tf32 asks for TF32 (the suite sets it: suite/workload/device.py); tf32 is the TF32
# tensor-core rate. None = not published, or not confirmed by us.
PEAK_TFLOPS: Dict[str, Dict[str, Optional[float]]] = {
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5, "tf32": 156.0},
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9, "tf32": 494.7},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "fp32": 51.2, "tf32": 378.0},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0, "tf32": 417.5},
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9, "tf32": 494.7},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0, "tf32": 417.5},
    "GH200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9, "tf32": 494.7},  # the H100/H200 chip at SXM rates
    "B200": {"bf16": 2250.0, "fp16": 2250.0, "fp32": None, "tf32": None},  # fp32: 75 or 80 in NVIDIA's papers
    "GB200": {"bf16": 2500.0, "fp16": 2500.0, "fp32": None, "tf32": None},  # fp32: 80 or 90, likewise
    "B300": {"bf16": 2250.0, "fp16": 2250.0, "fp32": None, "tf32": None},
    "L40S": {"bf16": 362.05, "fp16": 362.05, "fp32": 91.6, "tf32": 183.0},
    "MI300X": {"bf16": 1307.4, "fp16": 1307.4, "fp32": 163.4, "tf32": 653.7},
    "MI325X": {"bf16": 1307.4, "fp16": 1307.4, "fp32": 163.4, "tf32": 653.7},
}

# The names torch.cuda.get_device_name() reports (the driver's own names; ROCm's from
# amdgpu.ids), matched whole: a substring test gave "H200 NVL" the SXM part's peak and let
# "GH200" pass for "H200". A name not here has no peak, so its MFU is null, never a guess.
DEVICE_NAMES: Dict[str, str] = {
    "NVIDIA A100-SXM4-40GB": "A100",
    "NVIDIA A100-SXM4-80GB": "A100",
    "NVIDIA A100-PCIE-40GB": "A100",
    "NVIDIA A100 80GB PCIe": "A100",
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA GH200 120GB": "GH200",
    "NVIDIA GH200 144G HBM3e": "GH200",
    "NVIDIA B200": "B200",
    "NVIDIA GB200": "GB200",
    "NVIDIA B300 SXM6 AC": "B300",
    "NVIDIA L40S": "L40S",
    "AMD Instinct MI300X": "MI300X",
    "AMD Instinct MI300X VF": "MI300X",
    "AMD Instinct MI325X": "MI325X",
}
_DEVICE_KEYS = {" ".join(name.upper().split()): key for name, key in DEVICE_NAMES.items()}


def device_key(device_name: Optional[str]) -> Optional[str]:
    """The PEAK_TFLOPS key of a device name as torch reports it, matched whole (case and runs
    of spaces aside); None for a name not in DEVICE_NAMES."""
    if not device_name:
        return None
    return _DEVICE_KEYS.get(" ".join(device_name.upper().split()))


def peak_dtype(precision: str, tf32: bool) -> str:
    """The peak a run's MFU is taken against: its precision's, or TF32's for fp32 matmuls that
    were allowed TF32 (precision.tf32)."""
    return "tf32" if precision == "fp32" and tf32 else precision


def peak_tflops(device_name: Optional[str], dtype: str) -> Optional[float]:
    key = device_key(device_name)
    return None if key is None else PEAK_TFLOPS[key].get(dtype)


# A utilisation above 1 cannot be true: a wrong peak, or a clock that did not measure the work.
def implausible(ratio: Optional[float]) -> bool:
    """Whether a share of a ceiling (MFU, HFU, of GEMM ceiling) is a measurement error."""
    return ratio is not None and ratio == ratio and ratio > 1.0


def energy_metrics(telemetry: Optional[Dict], tokens: float) -> Dict[str, Optional[float]]:
    """The run's energy figures from its GPUs' telemetry (suite.workload.telemetry.combine_ranks:
    energy summed over the run's GPUs over the timed steps): tokens per joule = tokens trained
    in those steps / that energy. All None without telemetry (any CPU run): never estimated."""
    from suite.workload.telemetry import TELEMETRY_KEYS

    figures = {k: (telemetry or {}).get(k) for k in TELEMETRY_KEYS}
    energy = figures["energy_j"]
    figures["tokens_per_joule"] = tokens / energy if energy else None
    return figures


def step_time_stats(times_s: Sequence[float]) -> Dict[str, float]:
    """mean, median, p90 (nearest rank), population std and coefficient of variation."""
    if not times_s:
        raise ValueError("step_time_stats needs at least one step time")
    ordered = sorted(times_s)
    mean = statistics.fmean(ordered)
    std = statistics.pstdev(ordered)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {
        "step_time_mean_s": mean,
        "step_time_median_s": statistics.median(ordered),
        "step_time_p90_s": p90,
        "step_time_std_s": std,
        "step_time_cv": std / mean if mean > 0 else None,
        "step_time_min_s": ordered[0],
        "step_time_max_s": ordered[-1],
    }


def throughput(times_s: Sequence[float], tokens_per_step: int, samples_per_step: int,
               world_size: int) -> Dict[str, float]:
    """Throughput over the whole timed window: work done / time taken (not 1/median)."""
    total = float(sum(times_s))
    tokens_per_s = tokens_per_step * len(times_s) / total
    return {
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": tokens_per_s / world_size,
        "samples_per_s": samples_per_step * len(times_s) / total,
    }


def utilisation(flops_per_token_model: float, flops_per_token_hw: float,
                tokens_per_s_per_device: float, peak: Optional[float]) -> Dict[str, Optional[float]]:
    """TFLOP/s per device (model FLOPs), MFU and HFU; the ratios are None without a known peak."""
    tflops = flops_per_token_model * tokens_per_s_per_device / 1e12
    hw_tflops = flops_per_token_hw * tokens_per_s_per_device / 1e12
    return {
        "tflops_per_device": tflops,
        "hw_tflops_per_device": hw_tflops,
        "mfu": tflops / peak if peak else None,
        "hfu": hw_tflops / peak if peak else None,
    }


def run_metrics(*, model: Any, world_size: int, global_batch_size: int,
                step_times_s: Sequence[float], losses: Sequence[float],
                peak_memory_bytes: Optional[int], peak_memory_reserved_bytes: Optional[int],
                device_name: Optional[str], dtype: str, recompute: bool = False
                ) -> Dict[str, Optional[float]]:
    """Every metric of one run from its raw measurements (docs/runs-and-metrics.md); `model`
    is the run's model config (its family gives the parameter count)."""
    model_flops = models.flops_per_token(model)
    hw_flops = model_flops + (models.recompute_flops_per_token(model) if recompute else 0.0)
    rates = throughput(step_times_s, global_batch_size * model.seq_len, global_batch_size, world_size)
    finite = [x for x in losses if math.isfinite(x)]
    return {
        **rates,
        **step_time_stats(step_times_s),
        "timed_steps": len(step_times_s),
        "step_times_s": [float(t) for t in step_times_s],  # for intervals (A/B, ties), not a table
        "flops_per_token": model_flops,
        "flops_per_token_causal": models.flops_per_token(model, causal=True),
        **utilisation(model_flops, hw_flops, rates["tokens_per_s_per_device"],
                      peak_tflops(device_name, dtype)),
        "peak_tflops_per_device": peak_tflops(device_name, dtype),
        "peak_memory_bytes": peak_memory_bytes,
        "peak_memory_reserved_bytes": peak_memory_reserved_bytes,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_all_finite": len(finite) == len(losses),
    }


# Largest per-step loss difference from plain data parallel that still counts as the same
# training. fp32 layouts differ only in reduction order (measured: < 1e-6 on the tiny GPT);
# bf16/fp16 round every matmul, and layouts round in different places.
PARITY_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}


def loss_parity(losses: Sequence[float], reference: Sequence[float], dtype: str
                ) -> Dict[str, Optional[float]]:
    """Max absolute per-step loss difference against the reference run, and whether it is
    within the precision's tolerance (steps must match in number)."""
    if len(losses) != len(reference) or not losses:
        return {"max_abs_diff": None, "tolerance": PARITY_TOLERANCE[dtype], "matches": False}
    diff = max(abs(a - b) for a, b in zip(losses, reference))
    return {"max_abs_diff": diff, "tolerance": PARITY_TOLERANCE[dtype],
            "matches": math.isfinite(diff) and diff <= PARITY_TOLERANCE[dtype]}


# Bytes per parameter of model states (ZeRO paper, Rajbhandari et al. 2020, section 3): the
# parameters and gradients in the training dtype, plus the optimizer's states (with a fp32
# master copy of the parameters in mixed precision).
_OPTIMIZER_STATE_FP32 = {"sgd": 0, "sgd_momentum": 4, "adagrad": 4, "adam": 8, "adamw": 8, "lamb": 8}


def model_state_memory(*, n_params: int, precision: str, optimizer: str, zero_stage: int, dp: int,
                       model_parallel: int = 1, offload_optimizer: bool = False,
                       offload_params: bool = False) -> Dict[str, float]:
    """Predicted model-state bytes per device: stage 0 (P+G+O)Ψ, stage 1 (P+G)Ψ + OΨ/N,
    stage 2 PΨ + (G+O)Ψ/N, stage 3 (P+G+O)Ψ/N, with N the data-parallel size and Ψ the
    parameters a rank holds (divided by tensor x pipeline degree). Mixed-precision Adam gives
    the paper's 16 / 4+12/N / 2+14/N / 16/N bytes per parameter."""
    p = 4 if precision == "fp32" else 2
    g = p
    o = _OPTIMIZER_STATE_FP32[optimizer] + (0 if precision == "fp32" else 4)
    if offload_optimizer:
        o = 0
    psi = n_params / model_parallel
    per_param = {0: p + g + o, 1: p + g + o / dp, 2: p + (g + o) / dp, 3: (p + g + o) / dp}[zero_stage]
    if offload_params and zero_stage == 3:
        per_param -= p / dp
    return {"model_state_bytes_predicted": per_param * psi,
            "comm_bytes_per_step_predicted": communication_volume(n_params / model_parallel, g, zero_stage, dp)}


def communication_volume(params: float, grad_bytes: int, zero_stage: int, dp: int) -> float:
    """Bytes each rank sends per step for data parallelism (ZeRO paper, section 7): an all-reduce
    of the gradients is 2Ψ elements (reduce-scatter + all-gather) for stages 0-2, stage 3 adds an
    all-gather of the parameters in the backward pass: 3Ψ; times (N-1)/N on a ring."""
    if dp == 1:
        return 0.0
    elements = (3 if zero_stage == 3 else 2) * params * (dp - 1) / dp
    return elements * grad_bytes


def gemm_tflops(m: int, n: int, k: int, seconds: float) -> float:
    """An (m x k) @ (k x n) matrix multiply does 2mnk FLOPs."""
    return 2.0 * m * n * k / seconds / 1e12


# Bus-bandwidth factors of nccl-tests (doc/PERFORMANCE.md): the share of the message each rank
# must move, so that busbw is comparable with the link speed whatever the rank count.
def bus_bandwidth(op: str, algbw: float, world: int) -> float:
    """busbw = algbw x 2(n-1)/n for all_reduce, x (n-1)/n for all_gather and reduce_scatter;
    algbw = message bytes / time (the full buffer)."""
    factor = {"all_reduce": 2.0 * (world - 1) / world, "all_gather": (world - 1) / world,
              "reduce_scatter": (world - 1) / world}[op]
    return algbw * factor


def deepspeed_estimate(cfg, plan) -> Optional[int]:
    """DeepSpeed's own per-GPU model-state estimate (its estimators for stages 2 and 3, which
    assume mixed-precision Adam and data parallel only), or None where it has none."""
    m, s = cfg.model, cfg.strategy
    if s.engine != "deepspeed":  # FSDP2 is not DeepSpeed's to estimate
        return None
    if s.zero_stage not in (2, 3) or plan.tensor_parallel * plan.pipeline_parallel > 1:
        return None
    total = models.param_count(m)["total"]
    # Each estimator returns (CPU bytes, GPU bytes); only the GPU figure is used (the options
    # that change only the CPU figure, additional_buffer_factor and zero_init, are left as is).
    if s.zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return int(estimate_zero2_model_states_mem_needs(
            total, plan.ranks_per_node, plan.nodes, cpu_offload=s.offload_optimizer)[1])
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    largest = models.family(m.family).largest_layer_params(m)
    return int(estimate_zero3_model_states_mem_needs(
        total, largest, plan.ranks_per_node, plan.nodes, cpu_offload=s.offload_optimizer,
        cpu_offload_params=s.offload_params)[1])


def per_rank_metrics(per_rank: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Each rank's own figures as short lists in rank order (rank i at index i): its host, its
    median step time, its median forward-pass time and their coefficient of variation over the
    timed steps (null where not measured), every timed step's forward seconds, and its peak
    memory. The run's aggregates (slowest step, largest peak) stay as they are."""
    return {"rank_hosts": [r["host"] for r in per_rank],
            "rank_step_time_s": [r["step_time_s"] for r in per_rank],
            "rank_forward_time_s": [r["forward_time_s"] for r in per_rank],
            "rank_forward_time_cv": [r.get("forward_time_cv") for r in per_rank],
            "rank_forward_times_s": [r.get("forward_times_s") for r in per_rank],
            "rank_peak_memory_bytes": [r["peak_memory_bytes"] for r in per_rank]}
