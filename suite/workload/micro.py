"""Micro-benchmarks for the ceilings a training step is measured against: the largest matrix-
multiply TFLOP/s per dtype (the 'measured ceiling' for MFU) and collective bandwidth over
message sizes (algorithm and bus bandwidth, as nccl-tests reports them). Each timed region is
bracketed by device synchronisation; a size's time in a round is the slowest rank's mean, and
its figure the median over interleaved rounds."""
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


def interleaved_rounds(points: List[Callable[[], float]], rounds: int) -> List[List[float]]:
    """Each point's seconds in `rounds` rounds, taken round-robin (point 1, 2, ..., then point
    1 again): a few seconds of load from another process, or a node's clock stepping down,
    then falls on one round of every point rather than on every round of one, and the median
    over rounds is the point's figure (pure: the points time themselves)."""
    times: List[List[float]] = [[] for _ in points]
    for _ in range(rounds):
        for i, point in enumerate(points):
            times[i].append(point())
    return times


def round_figures(times: List[float]) -> Dict[str, float]:
    """A point's time over its rounds: the median (its figure), and the rounds' coefficient of
    variation (how far load swung it inside this run; 0 with one round)."""
    ordered = sorted(times)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    mean = sum(times) / len(times)
    variance = sum((t - mean) ** 2 for t in times) / (len(times) - 1) if len(times) > 1 else 0.0
    return {"time_s": median, "round_times_s": list(times), "round_cv": variance ** 0.5 / mean if mean else 0.0}


def gemm_points(sizes: List[int], dtypes: List[str], warmup: int, iters: int,
                device: torch.device) -> tuple[List[Dict], List[Callable[[], float]]]:
    """n x n @ n x n per size and dtype on every rank at once (as training runs them): each
    point's row (without its times) and the function that times it once."""
    rows, points = [], []
    for dtype in dtypes:
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
            b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
            rows.append({"dtype": dtype, "m": n, "n": n, "k": n})
            points.append(lambda a=a, b=b: _slowest(_timed(lambda: torch.matmul(a, b), warmup, iters), device))
    return rows, points


def _gemm_row(row: Dict, times: List[float]) -> Dict:
    out = {**row, **round_figures(times)}
    out["tflops"] = gemm_tflops(row["m"], row["n"], row["k"], out["time_s"])
    return out


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


def collective_points(ops: List[str], sizes_bytes: List[int], warmup: int, iters: int,
                      device: torch.device, hosts: List[str]) -> tuple[List[Dict], List[Callable[[], float]]]:
    """Each collective over each message size (the full buffer: all_reduce's input, all_gather's
    output, reduce_scatter's input), fp32 elements, in every scope (`scopes`): all groups of a
    scope run at once, and a size's time is the slowest group's. Each point's row (without its
    times) and the function that times it once."""
    rows, points = [], []
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
                call = {"all_reduce": lambda full=full, group=group: dist.all_reduce(full, group=group),
                        "all_gather": lambda full=full, shard=shard, group=group:
                            dist.all_gather_into_tensor(full, shard, group=group),
                        "reduce_scatter": lambda full=full, shard=shard, group=group:
                            dist.reduce_scatter_tensor(shard, full, group=group)}[op]
                rows.append({"scope": scope_of_world(hosts) if scope == "world" else scope,
                             "group": "world" if scope == "world" else "groups", "op": op,
                             "ranks": n, "bytes": elements * 4})
                points.append(lambda call=call: _slowest(_timed(call, warmup, iters), device))
    return rows, points


def _collective_row(row: Dict, times: List[float]) -> Dict:
    out = {**row, **round_figures(times)}
    out["algbw_gbps"] = row["bytes"] / out["time_s"] / 1e9
    out["busbw_gbps"] = bus_bandwidth(row["op"], row["bytes"] / out["time_s"], row["ranks"]) / 1e9
    return out


def peak_busbw(rows: List[Dict], ops: List[str], scope: str) -> Optional[Dict[str, float]]:
    """Per collective, the largest bus bandwidth measured in the scope; None if none was."""
    peaks = {op: max(r["busbw_gbps"] for r in rows if r["op"] == op and r["scope"] == scope)
             for op in ops if any(r["op"] == op and r["scope"] == scope for r in rows)}
    return peaks or None


def run_micro_benchmark(cfg, plan) -> Dict:
    """The run's micro-benchmark (workload=gemm, allreduce, or preflight: both) as record
    metrics: every rank's host, the rows, the ceiling per dtype and the peak bus bandwidth per
    collective (in all, inside a node and across nodes). Every point of the run (GEMMs and
    collectives alike) is timed in workload.rounds interleaved rounds (`interleaved_rounds`)."""
    w = cfg.workload
    device = torch.device(devices.current_device())  # the rank's own GPU (set before NCCL started)
    hosts: List[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    out: Dict = {"rank_hosts": hosts}
    gemm_rows, gemm_timers, coll_rows, coll_timers = [], [], [], []
    if w.name in ("gemm", "preflight"):
        gemm_rows, gemm_timers = gemm_points(w.gemm_sizes, w.gemm_dtypes, w.warmup, w.iters, device)
    if w.name in ("allreduce", "preflight"):
        sizes = list(w.message_bytes)
        if w.include_bucket_sizes:  # what the strategy's buckets move
            width = 4 if plan.precision == "fp32" else 2
            sizes += [cfg.strategy.reduce_bucket_size * width, cfg.strategy.allgather_bucket_size * width]
        coll_rows, coll_timers = collective_points(w.collectives, sorted(set(sizes)), w.warmup, w.iters,
                                                   device, hosts)
    times = interleaved_rounds(gemm_timers + coll_timers, w.rounds)
    if gemm_rows:
        rows = [_gemm_row(row, t) for row, t in zip(gemm_rows, times[:len(gemm_rows)])]
        out.update({"gemm": rows, "gemm_ceiling_tflops": {
            d: max(r["tflops"] for r in rows if r["dtype"] == d) for d in w.gemm_dtypes}})
    if coll_rows:
        rows = [_collective_row(row, t) for row, t in zip(coll_rows, times[len(gemm_rows):])]
        world = [r for r in rows if r["group"] == "world"]
        out.update({
            "collectives": rows,
            "busbw_peak_gbps": {op: max(r["busbw_gbps"] for r in world if r["op"] == op) for op in w.collectives},
            "busbw_intra_node_gbps": peak_busbw(rows, w.collectives, "intra_node") if len(hosts) > 1 else None,
            "busbw_inter_node_gbps": peak_busbw(rows, w.collectives, "inter_node")})
    return out
