"""Metric formulas against numbers computed by hand (the arithmetic is in the comments)."""
import math

import pytest

from suite.config import ModelConfig
from suite.metrics import (PARITY_TOLERANCE, device_key, loss_parity, peak_tflops, run_metrics,
                           step_time_stats, throughput, utilisation)


def test_step_time_statistics():
    stats = step_time_stats([4.0, 1.0, 3.0, 2.0])
    # mean 2.5; deviations 1.5, 0.5, 0.5, 1.5 -> variance (2.25+0.25+0.25+2.25)/4 = 1.25
    assert stats["step_time_mean_s"] == 2.5
    assert stats["step_time_median_s"] == 2.5
    assert stats["step_time_std_s"] == pytest.approx(math.sqrt(1.25))
    assert stats["step_time_cv"] == pytest.approx(math.sqrt(1.25) / 2.5)
    assert stats["step_time_p90_s"] == 4.0  # nearest rank: ceil(0.9*4) = 4th of 4
    assert (stats["step_time_min_s"], stats["step_time_max_s"]) == (1.0, 4.0)
    assert step_time_stats([0.1] * 10)["step_time_p90_s"] == 0.1
    with pytest.raises(ValueError):
        step_time_stats([])


def test_throughput_is_work_over_the_whole_window():
    # 3 steps of 1,000 tokens (8 samples) in 0.5 + 0.5 + 1.0 = 2 s on 2 devices
    assert throughput([0.5, 0.5, 1.0], 1000, 8, 2) == {
        "tokens_per_s": 1500.0, "tokens_per_s_per_device": 750.0, "samples_per_s": 12.0}


def test_mfu_on_known_devices_and_null_elsewhere():
    assert device_key("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert device_key("NVIDIA H100 PCIe") == "H100 PCIe"
    assert device_key("NVIDIA A100-SXM4-80GB") == "A100"
    assert device_key("NVIDIA H200") == "H200"
    assert device_key("AMD Instinct MI300X") == "MI300X"
    assert device_key("AMD EPYC 7763 64-Core Processor") is None
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA B200", "fp32") is None  # not a number we can vouch for
    # 125M at 100,000 tokens/s per device: 968,629,248 * 1e5 / 1e12 = 96.8629248 TFLOP/s
    u = utilisation(968_629_248, 968_629_248, 100_000, 989.4)
    assert u["tflops_per_device"] == pytest.approx(96.8629248)
    assert u["mfu"] == pytest.approx(96.8629248 / 989.4)
    assert utilisation(968_629_248, 968_629_248, 100_000, None)["mfu"] is None


def test_run_metrics_of_a_cpu_run_has_null_mfu_and_model_tflops():
    m = run_metrics(model=ModelConfig(),  # the tiny GPT: 2 layers, d 64, 4 heads, 64 tokens, vocab 512
                    world_size=2, global_batch_size=4, step_times_s=[0.02, 0.02],
                    losses=[6.2, 6.1, float("nan")], peak_memory_bytes=100,
                    peak_memory_reserved_bytes=None, device_name=None, dtype="fp32")
    # 4 samples x 64 tokens = 256 tokens per step; 512 tokens / 0.04 s = 12,800 tokens/s
    assert m["tokens_per_s"] == pytest.approx(12_800)
    assert m["tokens_per_s_per_device"] == pytest.approx(6_400)
    assert m["tflops_per_device"] == pytest.approx(895_488 * 6_400 / 1e12)
    assert m["mfu"] is None and m["hfu"] is None and m["peak_tflops_per_device"] is None
    assert m["loss_all_finite"] is False and m["loss_first"] == 6.2


def test_hfu_counts_the_recomputed_forward():
    m = run_metrics(model=ModelConfig(),  # the tiny GPT: 2 layers, d 64, 4 heads, 64 tokens, vocab 512
                    world_size=2, global_batch_size=4, step_times_s=[0.02, 0.02], losses=[6.0],
                    peak_memory_bytes=1, peak_memory_reserved_bytes=None,
                    device_name="NVIDIA H100 80GB HBM3", dtype="bf16", recompute=True)
    # model FLOPs 895,488 per token; hardware FLOPs + 298,496 = 1,193,984; 6,400 tokens/s/device
    assert m["tflops_per_device"] == pytest.approx(895_488 * 6_400 / 1e12)
    assert m["hw_tflops_per_device"] == pytest.approx(1_193_984 * 6_400 / 1e12)
    assert m["hfu"] == pytest.approx(1_193_984 * 6_400 / 1e12 / 989.4)
    assert m["hfu"] / m["mfu"] == pytest.approx(1_193_984 / 895_488)


def test_loss_parity_within_the_precision_tolerance():
    assert loss_parity([6.0, 5.9], [6.0, 5.9000004], "fp32")["matches"] is True
    off = loss_parity([6.0, 5.8], [6.0, 5.9], "fp32")
    assert off["matches"] is False and off["max_abs_diff"] == pytest.approx(0.1)
    assert loss_parity([6.0, 5.87], [6.0, 5.9], "bf16")["matches"] is True  # 0.03 <= 5e-2
    assert loss_parity([6.0], [6.0, 5.9], "fp32")["matches"] is False  # steps differ in number
    assert loss_parity([float("nan")], [6.0], "fp32")["matches"] is False
    assert PARITY_TOLERANCE["fp32"] < PARITY_TOLERANCE["bf16"]
    # the tolerances themselves, at their edges: fp32 1e-4 (the layouts' largest difference
    # measured is 7e-7; Ulysses without the suite's 1/sp loss scaling missed by 1.3e-2), bf16 5e-2
    assert loss_parity([6.0, 5.9], [6.0, 5.9 + 0.9e-4], "fp32")["matches"] is True
    assert loss_parity([6.0, 5.9], [6.0, 5.9 + 1.2e-4], "fp32")["matches"] is False
    assert loss_parity([6.0, 5.9], [6.0, 5.9 + 1.3e-2], "fp32")["matches"] is False
    assert loss_parity([6.0, 5.9], [6.0, 5.9 + 0.049], "bf16")["matches"] is True
    assert loss_parity([6.0, 5.9], [6.0, 5.9 + 0.06], "bf16")["matches"] is False


def test_gemm_and_bus_bandwidth_formulas():
    from suite.metrics import bus_bandwidth, gemm_tflops

    # 1024^3 x 2 = 2,147,483,648 FLOPs in 0.01 s = 0.2147483648 TFLOP/s
    assert gemm_tflops(1024, 1024, 1024, 0.01) == pytest.approx(0.2147483648)
    # nccl-tests: all_reduce busbw = algbw x 2(n-1)/n; all_gather, reduce_scatter x (n-1)/n
    assert bus_bandwidth("all_reduce", 100.0, 8) == pytest.approx(175.0)
    assert bus_bandwidth("all_gather", 100.0, 8) == pytest.approx(87.5)
    assert bus_bandwidth("reduce_scatter", 100.0, 4) == pytest.approx(75.0)
    assert bus_bandwidth("all_reduce", 100.0, 2) == pytest.approx(100.0)


def test_deepspeed_estimate_is_asked_with_the_run_layout(compose_cfg):
    from suite.metrics import deepspeed_estimate
    from suite.plan import plan_run, to_object

    def estimate(*overrides):
        cfg = compose_cfg(*overrides)
        return deepspeed_estimate(to_object(cfg), plan_run(cfg, 0))

    # tiny GPT, 169,728 parameters, 2 ranks on one node. DeepSpeed's ZeRO-2 formula (mixed-
    # precision Adam): 2 bytes x params + 18 bytes x params / GPUs = 339,456 + 1,527,552
    assert estimate("strategy=zero2") == 339_456 + 1_527_552
    # with the optimizer offloaded only the 16-bit parameters stay on the device
    assert estimate("strategy=zero2_offload") == 339_456
    # stages 0-1 and model-parallel layouts: DeepSpeed has no estimator for them
    assert estimate("strategy=zero1") is None and estimate("strategy=tp2_zero2") is None
    assert estimate("strategy=tp2_zero3") is None and estimate("strategy=pp2") is None
    # ZeRO-3 adds the largest layer in fp32: the embedding, 512 x 64 = 32,768 parameters x 4 B
    # = 131,072, to the same 18 bytes x params / GPUs
    assert estimate("strategy=zero3") == 131_072 + 1_527_552
    # parameters and optimizer offloaded: the largest layer alone stays on the device; with
    # the parameters kept, their 16-bit shard too: 2 x 169,728 / 2 = 169,728
    assert estimate("strategy=zero3_offload") == 131_072
    assert estimate("strategy=zero3_offload", "strategy.offload_params=false") == 131_072 + 169_728
    # two nodes of two ranks: four GPUs share the 18 bytes x params
    assert estimate("strategy=zero3", "cluster=slurm_local", "cluster.nodes=2") == 131_072 + 18 * 169_728 // 4
    assert estimate("strategy=zero2", "cluster=slurm_local", "cluster.nodes=2") == 339_456 + 18 * 169_728 // 4
    assert estimate("strategy=fsdp2") is None  # torch's FSDP2 is not DeepSpeed's to estimate


def test_each_ranks_figures_are_lists_in_rank_order():
    from suite.metrics import per_rank_metrics

    got = per_rank_metrics([
        {"host": "node1", "step_time_s": 0.5, "forward_time_s": 0.1, "forward_time_cv": 0.02,
         "forward_times_s": [0.1, 0.12], "peak_memory_bytes": 7},
        {"host": "node2", "step_time_s": 0.5, "forward_time_s": None, "forward_time_cv": None,
         "forward_times_s": [], "peak_memory_bytes": 9}])
    assert got == {"rank_hosts": ["node1", "node2"], "rank_step_time_s": [0.5, 0.5],
                   "rank_forward_time_s": [0.1, None], "rank_forward_time_cv": [0.02, None],
                   "rank_forward_times_s": [[0.1, 0.12], []], "rank_peak_memory_bytes": [7, 9]}


def test_a_ranks_own_summary_over_its_timed_steps():
    from suite.workload.train import _own_summary

    # forward times 0.1, 0.2, 0.3: median 0.2, population std sqrt(2/300) = 0.08165, CV 0.408
    got = _own_summary([1.0, 3.0, 2.0], [0.1, 0.2, 0.3], peak=5)
    assert (got["step_time_s"], got["forward_time_s"], got["peak_memory_bytes"]) == (2.0, 0.2, 5)
    assert got["forward_time_cv"] == pytest.approx((2 / 300) ** 0.5 / 0.2)
    assert _own_summary([1.0], [], peak=5)["forward_time_s"] is None  # pipeline: not measured


def test_collective_scopes_split_a_nodes_links_from_the_network():
    from suite.workload.micro import scope_of_world, scopes, slow_host_fraction

    # 2 nodes x 2 ranks: each node's pair inside, the k-th ranks of both nodes across
    assert scopes(["a", "a", "b", "b"]) == {"world": [[0, 1, 2, 3]], "intra_node": [[0, 1], [2, 3]],
                                            "inter_node": [[0, 2], [1, 3]]}
    assert scope_of_world(["a", "a", "b", "b"]) == "world"
    # one node: the world is inside it; one rank per node: the world is across nodes
    assert scopes(["a", "a"]) == {"world": [[0, 1]]} and scope_of_world(["a", "a"]) == "intra_node"
    assert scopes(["a", "b"]) == {"world": [[0, 1]]} and scope_of_world(["a", "b"]) == "inter_node"
    # nodes with unequal rank counts have no matching k-th ranks: only the world
    assert scopes(["a", "a", "b"]) == {"world": [[0, 1, 2]]}
    assert slow_host_fraction("node2:0.5", "node2") == 0.5
    assert slow_host_fraction("node2", "node2") == 1.0
    assert slow_host_fraction("node2:0.5", "node1") == 0.0 and slow_host_fraction("", "node1") == 0.0


def test_model_state_memory_per_zero_stage_by_hand():
    # issue 18: 1,000,000 parameters, bf16 AdamW (2 + 2 bytes, optimizer 12 with the fp32
    # master copy), 4 data-parallel ranks: the ZeRO paper's 16, 4 + 12/4, 2 + 14/4, 16/4 bytes
    from suite.metrics import model_state_memory

    def predicted(**kw):
        args = {"n_params": 1_000_000, "precision": "bf16", "optimizer": "adamw", "dp": 4, **kw}
        return model_state_memory(**args)["model_state_bytes_predicted"]

    assert [predicted(zero_stage=s) for s in range(4)] == [16e6, 7e6, 5.5e6, 4e6]
    assert predicted(zero_stage=2, model_parallel=2) == 2.75e6                 # half the parameters
    assert predicted(zero_stage=2, offload_optimizer=True) == 2.5e6           # 2 + 2/4
    assert predicted(zero_stage=3, offload_optimizer=True, offload_params=True) == 0.5e6  # 4/4 - 2/4


# ---- edges the mutation run (bench/mutation.sh) found unguarded ----

def test_step_time_edges_one_step_and_a_mean_below_one_second():
    one = step_time_stats([0.5])  # one step: it is its own median, p90, min and max
    assert (one["step_time_p90_s"], one["step_time_median_s"], one["step_time_cv"]) == (0.5, 0.5, 0.0)
    # steps under a second: the CV is still std / mean (0.1 and 0.3: std 0.1, mean 0.2)
    assert step_time_stats([0.1, 0.3])["step_time_cv"] == pytest.approx(0.5)
    # a clock that read 0 for every step: no CV rather than a division by zero
    assert step_time_stats([0.0, 0.0])["step_time_cv"] is None
    with pytest.raises(ValueError, match="^step_time_stats needs at least one step time$"):
        step_time_stats([])


def test_tera_is_exactly_ten_to_the_twelfth():
    from suite.metrics import gemm_tflops

    # 2 x 1,000 x 1,000 x 500 = 1e9 FLOPs in 1 s = 0.001 TFLOP/s; 1e12 FLOPs per token at one
    # token per second = 1 TFLOP/s (exact in binary floating point: compared with ==)
    assert gemm_tflops(1000, 1000, 500, 1.0) == 0.001
    u = utilisation(1e12, 2e12, 1.0, 4.0)
    assert (u["tflops_per_device"], u["hw_tflops_per_device"], u["mfu"], u["hfu"]) == (1.0, 2.0, 0.25, 0.5)


def test_a_utilisation_of_exactly_one_is_possible_and_above_it_is_not():
    from suite.metrics import implausible

    assert implausible(1.0) is False and implausible(1.0001) is True
    assert implausible(0.4) is False and implausible(None) is False
    assert implausible(float("nan")) is False  # not a figure at all: shown as missing elsewhere


def test_run_metrics_without_recompute_counts_hardware_flops_as_model_flops():
    m = run_metrics(model=ModelConfig(), world_size=1, global_batch_size=1, step_times_s=[1.0],
                    losses=[], peak_memory_bytes=None, peak_memory_reserved_bytes=None,
                    device_name="NVIDIA H100 80GB HBM3", dtype="bf16")
    assert m["hw_tflops_per_device"] == m["tflops_per_device"]  # recompute defaults to off
    # tiny GPT: attention 12 x 2 layers x 4 heads x 16 x 64 tokens = 98,304 per token; causal
    # counts half of it: 895,488 - 49,152
    assert m["flops_per_token"] == 895_488 and m["flops_per_token_causal"] == 846_336
    assert m["peak_tflops_per_device"] == 989.4
    assert (m["loss_first"], m["loss_last"], m["loss_all_finite"]) == (None, None, True)  # no losses
    m = run_metrics(model=ModelConfig(), world_size=1, global_batch_size=1, step_times_s=[1.0],
                    losses=[6.0, 5.5], peak_memory_bytes=None, peak_memory_reserved_bytes=None,
                    device_name=None, dtype="fp32")
    assert (m["loss_first"], m["loss_last"]) == (6.0, 5.5)


def test_parity_of_runs_with_different_step_counts_has_no_difference_to_show():
    assert loss_parity([6.0], [6.0, 5.9], "bf16") == {"max_abs_diff": None, "tolerance": 5e-2,
                                                      "matches": False}
    assert loss_parity([], [], "fp32") == {"max_abs_diff": None, "tolerance": 1e-4, "matches": False}
    assert loss_parity([0.0], [1e-4], "fp32")["matches"] is True  # exactly at the tolerance


def test_communication_volume_per_zero_stage_by_hand():
    from suite.metrics import communication_volume, model_state_memory

    # 1,000,000 parameters, 2-byte gradients, 4 ranks on a ring: (N-1)/N = 3/4
    # stages 0-2: 2 x 1e6 x 3/4 x 2 B = 3e6 B; stage 3 adds the parameters' all-gather: 4.5e6 B
    assert [communication_volume(1e6, 2, s, 4) for s in range(4)] == [3e6, 3e6, 3e6, 4.5e6]
    assert communication_volume(1e6, 2, 3, 1) == 0.0  # one rank sends nothing
    assert communication_volume(1e6, 4, 0, 2) == 4e6  # 2 x 1e6 x 1/2 x 4 B
    # through the memory model: a rank holds half the parameters with tensor parallel 2
    got = model_state_memory(n_params=2_000_000, precision="bf16", optimizer="adamw", zero_stage=3,
                             dp=4, model_parallel=2)
    assert got["comm_bytes_per_step_predicted"] == 4.5e6


def test_model_state_memory_by_optimizer_and_precision():
    from suite.metrics import model_state_memory

    def per_param(**kw):
        args = {"n_params": 1_000_000, "zero_stage": 0, "dp": 1, **kw}
        return model_state_memory(**args)["model_state_bytes_predicted"] / 1e6

    # fp32: 4 B parameter + 4 B gradient + the optimizer's own fp32 states, no master copy
    assert [per_param(precision="fp32", optimizer=o)
            for o in ("sgd", "sgd_momentum", "adagrad", "adam", "adamw", "lamb")] == [8, 12, 12, 16, 16, 16]
    # bf16: 2 + 2 + the states + a 4 B fp32 master copy: SGD 8, momentum 12, Adam 16
    assert [per_param(precision="bf16", optimizer=o) for o in ("sgd", "sgd_momentum", "adam")] == [8, 12, 16]
    # ZeRO-3 with only the parameters offloaded: (2 + 2 + 12) / 4 - 2 / 4 = 3.5 bytes per parameter
    assert per_param(precision="bf16", optimizer="adamw", zero_stage=3, dp=4, offload_params=True) == 3.5


def test_fp32_runs_allowed_tf32_are_measured_against_the_tf32_peak():
    from suite.metrics import peak_dtype, peak_tflops

    assert peak_dtype("fp32", tf32=False) == "fp32" and peak_dtype("fp32", tf32=True) == "tf32"
    assert peak_dtype("bf16", tf32=True) == "bf16"  # TF32 touches fp32 matmuls only
    # H100 SXM datasheet: TF32 tensor core 989 TFLOP/s with sparsity, 494.7 dense; plain fp32 66.9
    assert peak_tflops("NVIDIA H100 80GB HBM3", "tf32") == 494.7
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 66.9
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0
    assert peak_tflops("NVIDIA B200", "tf32") is None  # not confirmed: no MFU rather than a guess
