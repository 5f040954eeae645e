"""Micro-benchmarks for the ceilings a training step is measured against: the largest matrix-
multiply TFLOP/s per dtype (the 'measured ceiling' for MFU) and collective bandwidth over
message sizes (algorithm and bus bandwidth, as nccl-tests reports them). Each timed region is
bracketed by device synchronisation; a size's time is the slowest rank's mean."""
from __future__ import annotations

import time
from typing import Callable, Dict, List

import torch
import torch.distributed as dist
from suite.metrics import bus_bandwidth, gemm_tflops
from suite.workload import device as devices

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _timed(fn: Callable[[], None], warmup: int, iters: int) -> float:
    """Mean seconds per call over `iters` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    devices.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    devices.synchronize()
    return (time.perf_counter() - start) / iters


def _slowest(seconds: float, device: torch.device) -> float:
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def gemm_ceiling(sizes: List[int], dtypes: List[str], warmup: int, iters: int,
                 device: torch.device) -> List[Dict]:
    """n x n @ n x n per size and dtype on every rank at once (as training runs them)."""
    rows = []
    for dtype in dtypes:
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
            b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
            seconds = _slowest(_timed(lambda: torch.matmul(a, b), warmup, iters), device)
            rows.append({"dtype": dtype, "m": n, "n": n, "k": n, "time_s": seconds,
                         "tflops": gemm_tflops(n, n, n, seconds)})
    return rows


def collective_bandwidth(ops: List[str], sizes_bytes: List[int], warmup: int, iters: int,
                         device: torch.device) -> List[Dict]:
    """Each collective over each message size (the full buffer: all_reduce's input, all_gather's
    output, reduce_scatter's input), fp32 elements."""
    world = dist.get_world_size()
    rows = []
    for op in ops:
        for size in sizes_bytes:
            elements = max(world, size // 4 // world * world)  # divisible across ranks
            full = torch.ones(elements, device=device)
            shard = torch.ones(elements // world, device=device)
            call = {"all_reduce": lambda: dist.all_reduce(full),
                    "all_gather": lambda: dist.all_gather_into_tensor(full, shard),
                    "reduce_scatter": lambda: dist.reduce_scatter_tensor(shard, full)}[op]
            seconds = _slowest(_timed(call, warmup, iters), device)
            nbytes = elements * 4
            rows.append({"op": op, "bytes": nbytes, "time_s": seconds,
                         "algbw_gbps": nbytes / seconds / 1e9,
                         "busbw_gbps": bus_bandwidth(op, nbytes / seconds, world) / 1e9})
    return rows


def run_micro_benchmark(cfg, plan) -> Dict:
    """The run's micro-benchmark (workload=gemm or workload=allreduce) as record metrics: the
    rows, and the ceiling per dtype or the peak bus bandwidth per collective."""
    w = cfg.workload
    device = torch.device(devices.current_device())  # the rank's own GPU (set before NCCL started)
    if w.name == "gemm":
        rows = gemm_ceiling(w.gemm_sizes, w.gemm_dtypes, w.warmup, w.iters, device)
        return {"gemm": rows, "gemm_ceiling_tflops": {d: max(r["tflops"] for r in rows if r["dtype"] == d)
                                                      for d in w.gemm_dtypes}}
    sizes = list(w.message_bytes)
    if w.include_bucket_sizes:  # what the strategy's buckets move
        width = 4 if plan.precision == "fp32" else 2
        sizes += [cfg.strategy.reduce_bucket_size * width, cfg.strategy.allgather_bucket_size * width]
    rows = collective_bandwidth(w.collectives, sorted(set(sizes)), w.warmup, w.iters, device)
    return {"collectives": rows, "busbw_peak_gbps": {op: max(r["busbw_gbps"] for r in rows if r["op"] == op)
                                                     for op in w.collectives}}
