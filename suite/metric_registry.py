"""Every metric a run records, once: its unit, how it is shown, whether more is better, and
which workloads have it (after ReFrame's performance variables, which carry their unit with the
value). Collation, the report's tables and the docs' metric table all read this list; a metric a
run records that is not here fails a test instead of silently vanishing from the report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

TRAIN = ("train",)
MICRO = ("gemm", "allreduce", "preflight")
GEMM = ("gemm", "preflight")
COLLECTIVES = ("allreduce", "preflight")


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    #: column heading in the report ("" = not a report column of its own)
    heading: str = ""
    #: how a value is shown: a format spec (",.0f"), or pct, share (a share of a ceiling:
    #: above 100% shown as an error), mib, flag (yes/no)
    fmt: str = ".4g"
    #: True: more is better; False: less is better; None: not a figure of merit
    higher_is_better: Optional[bool] = None
    workloads: Tuple[str, ...] = TRAIN
    #: number, bool, or json (a list or a mapping, kept as JSON text in the runs table)
    kind: str = "number"


METRICS: Tuple[Metric, ...] = (
    # throughput
    Metric("tokens_per_s", "tokens/s", "tokens/s", ",.0f", True),
    Metric("tokens_per_s_per_device", "tokens/s", "tokens/s/device", ",.0f", True),
    Metric("samples_per_s", "samples/s", "samples/s", ",.1f", True),
    # step times
    Metric("step_time_mean_s", "s", "step mean (s)", ".4f", False),
    Metric("step_time_median_s", "s", "step median (s)", ".4f", False),
    Metric("step_time_p90_s", "s", "step p90 (s)", ".4f", False),
    Metric("step_time_std_s", "s", "step std (s)", ".4f", False),
    Metric("step_time_cv", "1", "step CV", "pct", False),
    Metric("step_time_min_s", "s", "step min (s)", ".4f", False),
    Metric("step_time_max_s", "s", "step max (s)", ".4f", False),
    Metric("timed_steps", "steps", "timed steps", ".0f"),
    Metric("step_times_s", "s", "", kind="json"),  # each timed step's (slowest rank's) time
    # FLOPs and utilisation
    Metric("flops_per_token", "FLOP", "FLOPs/token", ".4g"),
    Metric("flops_per_token_causal", "FLOP", "FLOPs/token (causal)", ".4g"),
    Metric("tflops_per_device", "TFLOP/s", "TFLOP/s/device", ".4g", True),
    Metric("hw_tflops_per_device", "TFLOP/s", "hardware TFLOP/s/device", ".4g", True),
    Metric("mfu", "1", "MFU", "share", True),
    Metric("hfu", "1", "HFU", "share", True),
    Metric("peak_tflops_per_device", "TFLOP/s", "datasheet peak (TFLOP/s)", ".4g"),
    # mixture of experts: routing over the timed steps, every rank's counts summed (null: dense)
    Metric("moe_dropped_fraction", "1", "tokens dropped", "pct", False),
    Metric("moe_expert_load", "1", "expert load (busiest / mean)", ".3f", False),
    Metric("moe_expert_load_max", "1", "expert load, worst layer", ".3f", False),
    Metric("moe_aux_loss", "1", "load-balancing loss", ".4g", False),
    # memory
    Metric("peak_memory_bytes", "B", "peak memory (MiB)", "mib", False),
    Metric("peak_memory_reserved_bytes", "B", "peak reserved (MiB)", "mib", False),
    Metric("memory_capacity_bytes", "B", "device memory (MiB)", "mib"),
    Metric("model_state_bytes_predicted", "B", "model states, ZeRO paper (MiB)", "mib"),
    Metric("deepspeed_estimate_bytes", "B", "DeepSpeed estimate (MiB)", "mib"),
    # the memory model (suite/memory.py, docs/memory.md): its terms and their sum per device
    Metric("memory_activation_bytes_predicted", "B", "activations, model (MiB)", "mib"),
    Metric("memory_logits_bytes_predicted", "B", "logits and loss, model (MiB)", "mib"),
    Metric("memory_buffer_bytes_predicted", "B", "buffers, model (MiB)", "mib"),
    Metric("memory_predicted_bytes", "B", "predicted peak (MiB)", "mib"),
    Metric("memory_required_bytes", "B", "required with allowance (MiB)", "mib"),
    # communication
    Metric("comm_bytes_per_step_predicted", "B", "comm/step, model (MiB)", "mib"),
    Metric("comm_bytes_per_step", "B", "comm/step by op", kind="json"),
    # each rank's own figures, rank order (the report's Stragglers section reads them)
    Metric("rank_hosts", "", "", workloads=TRAIN + MICRO, kind="json"),
    Metric("rank_step_time_s", "s", "", kind="json"),
    Metric("rank_forward_time_s", "s", "", kind="json"),
    Metric("rank_forward_time_cv", "1", "", kind="json"),
    Metric("rank_forward_times_s", "s", "", kind="json"),
    Metric("rank_peak_memory_bytes", "B", "", kind="json"),
    # losses
    Metric("loss_first", "1", "first loss", ".4f"),
    Metric("loss_last", "1", "last loss", ".4f"),
    Metric("loss_all_finite", "", "losses finite", "flag", kind="bool"),
    Metric("loss_per_step", "1", "", kind="json"),
    # set-up and compilation
    Metric("init_s", "s", "init (s)", ".1f", False),
    Metric("run_wall_s", "s", "run wall time (s)", ".1f", False, workloads=TRAIN + MICRO),
    Metric("compiled_graphs", "graphs", "compiled graphs", ".0f"),
    Metric("graph_breaks", "breaks", "graph breaks", ".0f", False),
    # energy and clocks (NVIDIA GPUs, NVML; null elsewhere)
    Metric("energy_j", "J", "energy (J)", ",.0f", False),
    Metric("tokens_per_joule", "tokens/J", "tokens/J", ",.1f", True),
    Metric("power_mean_w", "W", "power (W)", ",.0f"),
    Metric("sm_clock_mean_mhz", "MHz", "SM clock (MHz)", ",.0f", True),
    Metric("sm_clock_min_mhz", "MHz", "min SM clock (MHz)", ",.0f", True),
    Metric("temperature_max_c", "C", "max temperature (C)", ".0f"),
    Metric("throttled", "", "throttled", "flag", False, kind="bool"),
    Metric("throttle_reasons", "", "throttle reasons", kind="json"),
    # micro-benchmarks
    Metric("gemm", "", "", workloads=GEMM, kind="json"),
    Metric("gemm_ceiling_tflops", "TFLOP/s", "GEMM ceiling", workloads=GEMM, kind="json"),
    Metric("collectives", "", "", workloads=COLLECTIVES, kind="json"),
    Metric("busbw_peak_gbps", "GB/s", "peak busbw", workloads=COLLECTIVES, kind="json"),
    Metric("busbw_intra_node_gbps", "GB/s", "peak busbw inside a node", workloads=COLLECTIVES, kind="json"),
    Metric("busbw_inter_node_gbps", "GB/s", "peak busbw across nodes", workloads=COLLECTIVES, kind="json"),
)

BY_NAME: Dict[str, Metric] = {m.name: m for m in METRICS}


def scalar_columns() -> list:
    """Metrics that are one number (or flag) per run: the runs table's metric columns."""
    return [m.name for m in METRICS if m.kind != "json"]


def bool_columns() -> list:
    return [m.name for m in METRICS if m.kind == "bool"]


def unregistered(metrics: Dict) -> list:
    """Keys of a record's metrics that are not in the registry (should be none)."""
    return sorted(set(metrics) - set(BY_NAME))
