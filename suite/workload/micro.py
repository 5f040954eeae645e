"""Micro-benchmarks for the ceilings a training step is measured against: the largest matrix-
multiply TFLOP/s per dtype (the 'measured ceiling' for MFU) and collective bandwidth over
message sizes (algorithm and bus bandwidth, as nccl-tests reports them). Each timed region is
bracketed by device synchronisation; a size's time is the slowest rank's mean."""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from suite.metrics import bus_bandwidth, gemm_tflops
from suite.workload import device as devices

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Test-only: "HOST:FRACTION" makes every timed region on that host take FRACTION longer (a slow
# node for the preflight check to find). Records list it among their environment variables.
SLOW_HOST_VARIABLE = "SUITE_TEST_SLOW_HOST"


def slow_host_fraction(spec: str, hostname: str) -> float:
    """The slowdown `spec` ("node2:0.5"; no fraction = 1.0) asks of this host; 0 if none."""
    host, _, fraction = spec.partition(":")
    return float(fraction or 1.0) if host and host == hostname else 0.0


def _timed(fn: Callable[[], None], warmup: int, iters: int) -> float:
    """Mean seconds per call over `iters` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    devices.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    devices.synchronize()
    slowdown = slow_host_fraction(os.environ.get(SLOW_HOST_VARIABLE, ""), socket.gethostname())
    if slowdown:
        time.sleep(slowdown * (time.perf_counter() - start))
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


def scopes(hosts: List[str]) -> Dict[str, List[List[int]]]:
    """The rank groups each scope measures, from every rank's host (rank order): `world`;
    with several nodes of several ranks each, also `intra_node` (the ranks of each node) and
    `inter_node` (the k-th rank of every node), which split a node's links from the network's.
    With one node the world is intra-node; with one rank per node it is inter-node."""
    nodes: Dict[str, List[int]] = {}
    for rank, host in enumerate(hosts):
        nodes.setdefault(host, []).append(rank)
    groups = {"world": [list(range(len(hosts)))]}
    sizes = {len(ranks) for ranks in nodes.values()}
    if len(nodes) > 1 and len(sizes) == 1 and sizes != {1}:
        groups["intra_node"] = list(nodes.values())
        groups["inter_node"] = [list(ranks) for ranks in zip(*nodes.values())]
    return groups


def scope_of_world(hosts: List[str]) -> str:
    """What the world group measures: inside a node (one node), across nodes (one rank per
    node), or both at once."""
    if len(set(hosts)) == 1:
        return "intra_node"
    return "inter_node" if len(set(hosts)) == len(hosts) else "world"


def collective_bandwidth(ops: List[str], sizes_bytes: List[int], warmup: int, iters: int,
                         device: torch.device, hosts: List[str]) -> List[Dict]:
    """Each collective over each message size (the full buffer: all_reduce's input, all_gather's
    output, reduce_scatter's input), fp32 elements, in every scope (`scopes`): all groups of a
    scope run at once, and a size's time is the slowest group's."""
    rows = []
    rank = dist.get_rank()
    for scope, groups in scopes(hosts).items():
        # every rank creates every group, in the same order (torch.distributed's rule)
        handles = [None if scope == "world" else dist.new_group(g) for g in groups]
        mine = next(i for i, g in enumerate(groups) if rank in g)
        group, n = handles[mine], len(groups[mine])
        for op in ops:
            for size in sizes_bytes:
                elements = max(n, size // 4 // n * n)  # divisible across the group's ranks
                full = torch.ones(elements, device=device)
                shard = torch.ones(elements // n, device=device)
                call = {"all_reduce": lambda: dist.all_reduce(full, group=group),
                        "all_gather": lambda: dist.all_gather_into_tensor(full, shard, group=group),
                        "reduce_scatter": lambda: dist.reduce_scatter_tensor(shard, full, group=group)}[op]
                seconds = _slowest(_timed(call, warmup, iters), device)
                nbytes = elements * 4
                rows.append({"scope": scope_of_world(hosts) if scope == "world" else scope,
                             "group": "world" if scope == "world" else "groups", "op": op,
                             "ranks": n, "bytes": nbytes, "time_s": seconds,
                             "algbw_gbps": nbytes / seconds / 1e9,
                             "busbw_gbps": bus_bandwidth(op, nbytes / seconds, n) / 1e9})
    return rows


def peak_busbw(rows: List[Dict], ops: List[str], scope: str) -> Optional[Dict[str, float]]:
    """Per collective, the largest bus bandwidth measured in the scope; None if none was."""
    peaks = {op: max(r["busbw_gbps"] for r in rows if r["op"] == op and r["scope"] == scope)
             for op in ops if any(r["op"] == op and r["scope"] == scope for r in rows)}
    return peaks or None


def run_micro_benchmark(cfg, plan) -> Dict:
    """The run's micro-benchmark (workload=gemm, allreduce, or preflight: both) as record
    metrics: every rank's host, the rows, the ceiling per dtype and the peak bus bandwidth per
    collective (in all, inside a node and across nodes)."""
    w = cfg.workload
    device = torch.device(devices.current_device())  # the rank's own GPU (set before NCCL started)
    hosts: List[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    out: Dict = {"rank_hosts": hosts}
    if w.name in ("gemm", "preflight"):
        rows = gemm_ceiling(w.gemm_sizes, w.gemm_dtypes, w.warmup, w.iters, device)
        out.update({"gemm": rows, "gemm_ceiling_tflops": {
            d: max(r["tflops"] for r in rows if r["dtype"] == d) for d in w.gemm_dtypes}})
    if w.name in ("allreduce", "preflight"):
        sizes = list(w.message_bytes)
        if w.include_bucket_sizes:  # what the strategy's buckets move
            width = 4 if plan.precision == "fp32" else 2
            sizes += [cfg.strategy.reduce_bucket_size * width, cfg.strategy.allgather_bucket_size * width]
        rows = collective_bandwidth(w.collectives, sorted(set(sizes)), w.warmup, w.iters, device, hosts)
        world = [r for r in rows if r["group"] == "world"]
        out.update({
            "collectives": rows,
            "busbw_peak_gbps": {op: max(r["busbw_gbps"] for r in world if r["op"] == op) for op in w.collectives},
            "busbw_intra_node_gbps": peak_busbw(rows, w.collectives, "intra_node") if len(hosts) > 1 else None,
            "busbw_inter_node_gbps": peak_busbw(rows, w.collectives, "inter_node")})
    return out
