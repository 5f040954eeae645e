"""Every run is checked against the memory it will have before anything starts (host memory
per rank on the CPU, GPU memory on GPUs), and a run that still outgrows its share on the CPU
ends as an `oom` record instead of in the kernel's OOM killer (docs/memory.md, "Host memory on
the CPU"). Hand-computed bytes, a faked NVML, a limit set in a child process, and two real
sweeps: the 13B one refused while planning, and one run forced past the check."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from suite import memory, results
from suite.config import (ClusterConfig, ConfigError, ModelConfig, StrategyConfig, SubmitConfig, SuiteConfig,
                          TrainConfig)
from suite.memory import LocalMemory
from suite.plan import memory_line, memory_need, plan_run, to_object

from conftest import REPO, run_sweep, sweep_dirs

GIB = 2 ** 30
RUNTIME = memory.CPU_RANK_RUNTIME_BYTES  # 0.5 GiB
TINY = 169_728  # the tiny GPT's parameters
# the tiny GPT, ddp, fp32 AdamW, micro-batch 2 on the CPU (tests/test_memory.py, by hand):
# states 169,728 x 16 = 2,715,648; buffers 169,728 x 4 = 678,912; activations 1,056,768;
# logits 854,016
TINY_DDP_PREDICTED = 2_715_648 + 678_912 + 1_056_768 + 854_016  # 5,305,344
TINY_DDP_REQUIRED = TINY_DDP_PREDICTED * 1.1 + RUNTIME            # 542,706,790.4
# a 24 GiB laptop without a GPU (the issue's)
LAPTOP = LocalMemory(host_total_bytes=24 * GIB, host_available_bytes=23 * GIB)


def tiny(cluster=None, **strategy):
    cfg = SuiteConfig(strategy=StrategyConfig(**strategy),
                      cluster=cluster or ClusterConfig(accelerator="cpu", cpu_ranks=2),
                      train=TrainConfig(micro_batch_size=2))
    return cfg


# --- the arithmetic --------------------------------------------------------------------------

def test_host_memory_per_rank_of_the_tiny_gpt_by_hand():
    cfg = tiny()
    plan = plan_run(cfg)
    need = memory.host_memory_per_rank(cfg, plan)
    assert need["predicted_bytes"] == TINY_DDP_PREDICTED
    assert need["build_bytes"] == TINY * 4  # 678,912: less than the training peak
    assert need["runtime_bytes"] == RUNTIME
    assert need["required_bytes"] == pytest.approx(TINY_DDP_REQUIRED)


def test_offload_frees_no_host_memory_on_the_cpu():
    cfg = tiny(name="zero2_offload", zero_stage=2, offload_optimizer=True)
    plan = plan_run(cfg)
    # predict_memory (the device's view): stage 2 without optimizer states, 4 + 4/2 = 6 bytes
    # per parameter; in host memory the states are still there: 4 + (4 + 8)/2 = 10
    assert memory.predict_memory(cfg, plan)["model_state_bytes"] == TINY * 6
    assert memory.host_memory_per_rank(cfg, plan)["model_state_bytes"] == TINY * 10


def test_the_fp32_weights_built_whole_can_be_the_peak():
    assert memory.build_bytes(tiny(), plan_run(tiny())) == TINY * 4
    assert memory.build_bytes(tiny(zero_stage=3), plan_run(tiny(zero_stage=3))) == 0  # zero.Init
    pp = SuiteConfig(strategy=StrategyConfig(pipeline_parallel=2), cluster=ClusterConfig(accelerator="cpu"))
    assert memory.build_bytes(pp, plan_run(pp)) == TINY * 4 / 2  # a stage builds its own layers
    # 8-way AutoTP over 64 ranks (a Slurm CPU cluster): states 16 / 8 bytes per parameter, but
    # every rank first builds the whole model in fp32, 4 bytes per parameter (FSDP2 no longer
    # does: it builds on the meta device and materialises its shards)
    big = ModelConfig(name="wide", n_layers=8, d_model=1024, n_heads=8, seq_len=8, vocab_size=512)
    cfg = SuiteConfig(model=big, strategy=StrategyConfig(name="tp8", zero_stage=0, tensor_parallel=8),
                      cluster=ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=8, nodes=8),
                      train=TrainConfig(micro_batch_size=1))
    plan = plan_run(cfg)
    need = memory.host_memory_per_rank(cfg, plan)
    params = need["build_bytes"] / 4
    assert need["model_state_bytes"] == params * 16 / 8
    assert need["build_bytes"] > need["predicted_bytes"]
    assert need["required_bytes"] == pytest.approx(need["build_bytes"] * 1.1 + RUNTIME)


def test_where_the_host_memory_comes_from():
    local = plan_run(tiny(), local_memory=LAPTOP)  # a local run: MemAvailable at planning
    assert local.host_memory_bytes == 23 * GIB and "MemAvailable 23.00 GiB" in local.host_memory_source
    declared = tiny(ClusterConfig(accelerator="cpu", host_memory_gb=8))  # declared wins
    assert plan_run(declared, local_memory=LAPTOP).host_memory_bytes == 8 * GIB
    slurm = ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=4, mem_gb=64)
    plan = plan_run(tiny(slurm), local_memory=LAPTOP)  # the login node's memory says nothing
    assert plan.host_memory_bytes == 64 * GIB and "cluster.mem_gb=64" in plan.host_memory_source
    unknown = ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=4)  # mem_gb 0: all
    plan = plan_run(tiny(unknown), local_memory=LAPTOP)
    assert plan.host_memory_bytes is None
    assert memory_line(tiny(unknown), plan).startswith("host memory per rank: not checked: the nodes' host "
                                                       "memory is not declared (cluster.host_memory_gb")
    assert memory_need(tiny(unknown), plan).problem is None


def test_a_rank_gets_its_share_and_the_boundary_is_exact():
    # 1 GiB for 2 ranks: 536,870,912 bytes each, below the 542,706,790.4 the tiny GPT needs
    cfg = tiny(ClusterConfig(accelerator="cpu", host_memory_gb=1))
    with pytest.raises(ConfigError, match=r"needs 0\.51 GiB of host memory per rank by the memory model "
                                          r".* more than the 0\.50 GiB each rank has \(cluster\.host_memory_gb=1, "
                                          r"/ 2 ranks per node\)"):
        plan_run(cfg)
    need = memory_need(cfg, plan_run(cfg, check_memory=False))
    assert (need.kind, need.available_bytes) == ("host", GIB / 2)
    assert need.required_bytes == pytest.approx(TINY_DDP_REQUIRED)
    fits = tiny(ClusterConfig(accelerator="cpu", host_memory_gb=2 * TINY_DDP_REQUIRED / GIB))
    assert memory_need(fits, plan_run(fits)).problem is None
    # submit.try_anyway plans it anyway, and the plan still carries the share for the rank
    forced = SuiteConfig(cluster=ClusterConfig(accelerator="cpu", host_memory_gb=1),
                         submit=SubmitConfig(try_anyway=True))
    assert plan_run(forced).host_memory_bytes == GIB


def test_the_13b_sweep_is_refused_on_a_24_gib_laptop(compose_cfg):
    """The eight runs of `python -m suite.sweep -m model=gpt_13b` (ddp, zero1-3 x adamw,
    sgd_momentum) on a 24 GiB machine without a GPU, each refused with its numbers."""
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        for optimizer in ("adamw", "sgd_momentum"):
            cfg = compose_cfg("model=gpt_13b", f"strategy={strategy}", f"optimizer={optimizer}")
            with pytest.raises(ConfigError) as refused:
                plan_run(cfg, local_memory=LAPTOP)
            text = str(refused.value)
            assert text.startswith(f"model=gpt_13b (13,111,183,360 parameters) with strategy={strategy} (ZeRO-")
            assert "GiB of host memory per rank by the memory model" in text
            assert "more than the 11.50 GiB each rank has (MemAvailable 23.00 GiB of this machine" in text
            assert "Would fit, by the same model: model=gpt_125m (163,895,808 parameters, " in text
    # by hand, ddp / AdamW / fp32 / micro-batch 2 / 2,048 tokens: states 13,111,183,360 x 16 =
    # 209,778,933,760; activations 40 layers x 4,096 tokens x ((16 x 5,120 + 4) x 4 + 40 x 4) =
    # 53,715,927,040; logits 4,096 x ((5,120 + 5,120 + 2) x 4 + 8 + 12 x 50,304) = 2,640,379,904;
    # buffers min(params, 5e8) x 4 = 2e9; sum 268,135,240,704 x 1.1 + 0.5 GiB = 295,485,635,686
    # = 275.19 GiB. gpt_125m: 163,895,808 x 16 + 12 x 4,096 x (12,292 x 4 + 12 x 4) + 4,096 x
    # (1,538 x 4 + 8 + 603,648) + 163,895,808 x 4 = 8,194,754,560 x 1.1 + 0.5 GiB = 8.90 GiB
    cfg = to_object(compose_cfg("model=gpt_13b", "strategy=ddp", "optimizer=adamw"))
    need = memory_need(cfg, plan_run(cfg, local_memory=LAPTOP, check_memory=False))
    assert need.required_bytes == pytest.approx(295_485_635_686.4)
    assert need.available_bytes == 23 * GIB / 2
    assert "(163,895,808 parameters, 8.90 GiB)" in need.problem


def test_suggestions_are_computed_with_the_same_model():
    # the tiny GPT under ZeRO-1 with 1.5 GiB for 2 ranks: DeepSpeed's 5e8-element fp32 reduce
    # bucket (2e9 bytes) does not fit; a 5e7 one does: states 169,728 x (4 + 4 + 8 / 2) =
    # 2,036,736 + activations 1,056,768 + logits 854,016 + bucket 2e8 = 203,947,520 x 1.1 +
    # 0.5 GiB = 761,213,184 = 0.71 GiB of 0.75. Nothing else fits: a higher stage keeps the
    # bucket, more nodes shard only the states, and no preset is smaller than tiny.
    cfg = tiny(ClusterConfig(accelerator="cpu", host_memory_gb=1.5), name="zero1", zero_stage=1)
    with pytest.raises(ConfigError, match=r"needs 2\.55 GiB .* Would fit, by the same model: "
                                          r"strategy\.reduce_bucket_size=5e\+07 \(0\.71 GiB\); or "
                                          r"submit\.try_anyway=true"):
        plan_run(cfg)
    # the fewest nodes: ZeRO-3 with a small bucket on nodes like this one; one node fewer does not fit
    model = ModelConfig(name="wide", n_layers=2, d_model=1024, n_heads=8, seq_len=8, vocab_size=512)
    cfg = SuiteConfig(model=model, strategy=StrategyConfig(name="z3", zero_stage=3, reduce_bucket_size=1000,
                                                           stage3_max_live_parameters=1000),
                      cluster=ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=2,
                                            host_memory_gb=1.3),
                      train=TrainConfig(micro_batch_size=1))
    plan = plan_run(cfg, check_memory=False)
    need = memory_need(cfg, plan)
    assert need.problem and "cluster.nodes=" in need.problem
    nodes = int(need.problem.split("cluster.nodes=")[1].split(" ")[0])
    import dataclasses

    def required(n):
        p = dataclasses.replace(plan, nodes=n, world_size=2 * n, data_parallel_size=2 * n)
        return memory.host_memory_per_rank(cfg, p)["required_bytes"]
    assert required(nodes) <= 1.3 * GIB / 2 < required(nodes - 1)


def test_offload_is_suggested_on_gpus_only():
    m13 = ModelConfig(name="gpt_13b", n_layers=40, d_model=5120, n_heads=40, seq_len=2048, vocab_size=50304)
    on_gpus = SuiteConfig(model=m13, strategy=StrategyConfig(name="zero1", zero_stage=1),
                          cluster=ClusterConfig(accelerator="cuda", gpus_per_node=8),
                          train=TrainConfig(micro_batch_size=1, activation_checkpointing="full"))
    h100 = LocalMemory(gpu_bytes=80 * GIB, gpu_name="NVIDIA H100 80GB HBM3")
    with pytest.raises(ConfigError, match=r"per device.*NVIDIA H100 80GB HBM3: the smallest GPU of this "
                                          r"machine.*Would fit.*strategy\.zero_stage="):
        plan_run(on_gpus, local_memory=h100)
    text = memory_need(on_gpus, plan_run(on_gpus, local_memory=h100, check_memory=False)).problem
    assert "offload" in text
    on_cpu = SuiteConfig(model=m13, strategy=StrategyConfig(name="zero1", zero_stage=1),
                         cluster=ClusterConfig(accelerator="cpu", host_memory_gb=64))
    text = memory_need(on_cpu, plan_run(on_cpu, check_memory=False)).problem
    assert "offload_optimizer" not in text


# --- the GPUs this machine sees (NVML, faked) --------------------------------------------------

class FakeNVML:
    class NVMLError(Exception):
        pass

    def __init__(self, sizes, fail=False):
        self.sizes, self.fail, self.shut = sizes, fail, False

    def nvmlInit(self):
        if self.fail:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return len(self.sizes)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return int(uuid.rsplit("-", 1)[1])

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Memory", (), {"total": self.sizes[handle][0]})()

    def nvmlDeviceGetName(self, handle):
        return self.sizes[handle][1].encode()  # older nvidia-ml-py returns bytes


def test_the_smallest_gpu_a_local_run_would_use():
    nvml = FakeNVML([(80 * GIB, "H100 80GB"), (40 * GIB, "A100 40GB"), (80 * GIB, "H100 80GB")])
    assert memory.gpu_memory(nvml, None) == (40 * GIB, "A100 40GB") and nvml.shut
    assert memory.gpu_memory(nvml, "0,2", "PCI_BUS_ID") == (80 * GIB, "H100 80GB")  # NVML's order
    assert memory.gpu_memory(nvml, "0,2") == (40 * GIB, "A100 40GB")  # CUDA's order: all, the smallest
    assert memory.gpu_memory(nvml, "GPU-x-0,GPU-x-2") == (80 * GIB, "H100 80GB")  # by UUID
    assert memory.gpu_memory(nvml, "") is None                       # no GPU for the runs
    assert memory.gpu_memory(nvml, "7", "PCI_BUS_ID") is None         # NVML does not know it
    assert memory.gpu_memory(FakeNVML([], fail=True), None) is None    # no driver


def test_local_gpu_memory_checks_local_gpu_runs_only():
    m13 = ModelConfig(name="gpt_13b", n_layers=40, d_model=5120, n_heads=40, seq_len=2048, vocab_size=50304)
    local = SuiteConfig(model=m13, cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2))
    gpus = LocalMemory(gpu_bytes=80 * GIB, gpu_name="H100")
    plan = plan_run(local, local_memory=gpus, check_memory=False)
    assert plan.gpu_memory_bytes == 80 * GIB and plan.host_memory_bytes is None  # no host check on GPUs
    need = memory_need(local, plan)
    # the same bytes as with cluster.gpu_memory_gb=80 (tests/test_validation.py: 247.08 GiB)
    declared = SuiteConfig(model=m13, cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2, gpu_memory_gb=80))
    assert need.required_bytes == memory_need(declared, plan_run(declared, check_memory=False)).required_bytes
    assert need.problem.startswith("model=gpt_13b") and "the 80.00 GiB per device (H100: the smallest GPU" in need.problem
    slurm = SuiteConfig(model=m13, cluster=ClusterConfig(scheduler="slurm", accelerator="cuda", gpus_per_node=2))
    plan = plan_run(slurm, local_memory=gpus)  # a login node's GPUs say nothing of the compute nodes'
    assert plan.gpu_memory_bytes is None and "not checked" in memory_line(slurm, plan)


# --- this machine, and the rank's own limit ---------------------------------------------------

def test_meminfo_and_the_rank_limit_arithmetic(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24683656 kB\nMemFree:        21625320 kB\n"
                    "MemAvailable:   23352824 kB\nHugePages_Total:       0\n")
    assert memory.read_local_memory(False, str(info)) == LocalMemory(24683656 * 1024, 23352824 * 1024)
    assert memory.read_local_memory(False, str(tmp_path / "none")) == LocalMemory()
    status = {"VmSize": 767 * 2 ** 20, "VmData": 287 * 2 ** 20, "VmRSS": 256 * 2 ** 20}
    # RLIMIT_DATA = what is mapped + (share - what is already resident)
    assert memory.rank_memory_limit(GIB, status, "6.18.44-fc") == ("RLIMIT_DATA", (287 + 1024 - 256) * 2 ** 20)
    assert memory.rank_memory_limit(GIB, status, "3.10.0-1160.el7.x86_64") == (
        "RLIMIT_AS", (767 + 1024 - 256) * 2 ** 20)  # before 4.7 RLIMIT_DATA misses mmap
    assert memory.rank_memory_limit(100 * 2 ** 20, status, "5.4.0") == ("RLIMIT_DATA", 287 * 2 ** 20)  # no room


def test_torchs_cpu_allocation_failure_is_an_oom():
    failure = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)")
    assert results.classify_exception(failure) == "oom"
    assert results.classify_exception(MemoryError()) == "oom"


@pytest.mark.skipif(platform.system() != "Linux", reason="the limit is set on Linux only")
def test_a_rank_limited_to_its_share_gets_a_memory_error_not_the_oom_killer():
    """The rank's own limit, in a child process: 1 GiB for 2 ranks, then 2 GiB asked for."""
    script = (
        "import torch, dataclasses\n"
        "from suite import rank, results\n"
        "from suite.config import ClusterConfig, SuiteConfig\n"
        "from suite.plan import plan_run\n"
        "plan = plan_run(SuiteConfig(cluster=ClusterConfig(accelerator='cpu', host_memory_gb=1)), check_memory=False)\n"
        "note = rank._limit_host_memory(plan)\n"
        "small = torch.ones(64 * 2 ** 20 // 4)\n"  # 64 MiB: within the share
        "try:\n"
        "    torch.ones(2 * 2 ** 30 // 4)\n"
        "except Exception as exc:\n"
        "    print(results.classify_exception(exc), note)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("oom RLIMIT_") and "its share 0.50 GiB (cluster.host_memory_gb=1" in done.stdout


# --- real sweeps --------------------------------------------------------------------------------

def _vmstat_oom_kills() -> int:
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def test_the_13b_sweep_is_refused_before_any_process_starts(tmp_path):
    available = memory.read_local_memory(False).host_available_bytes
    if available is None or available / 2 > 300 * GIB:
        pytest.skip("a machine whose host memory holds gpt_13b on 2 ranks, or none read")
    done = run_sweep(tmp_path, "model=gpt_13b", timeout=120)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "The sweep was refused, nothing was started. Invalid points:" in out
    refused = [line for line in out.splitlines() if line.startswith("  #")]
    assert len(refused) == 8
    for line in refused:
        assert "model=gpt_13b (13,111,183,360 parameters)" in line
        assert "GiB of host memory per rank by the memory model" in line and "each rank has (MemAvailable" in line
        assert "Would fit, by the same model:" in line
    assert "needs 275.19 GiB of host memory per rank" in refused[0]  # ddp / adamw, by hand above
    [sweep] = sweep_dirs(tmp_path)
    assert sorted(p.name for p in sweep.iterdir()) == ["multirun.yaml"]  # no run folder, no job


@pytest.mark.skipif(platform.system() != "Linux", reason="the limit is set on Linux only")
def test_a_run_forced_past_the_check_ends_as_oom_and_the_machine_is_untouched(tmp_path):
    """One run of a 200M-parameter GPT (0.8 GB of fp32 weights per rank) on 2 ranks declared
    to have 1 GiB between them, forced past the check: each rank's limit stops the build."""
    kills = _vmstat_oom_kills()
    done = run_sweep(tmp_path, "strategy=ddp", "optimizer=sgd", "model.d_model=2048", "model.n_heads=16",
                     "model.n_layers=4", "cluster.host_memory_gb=1", "submit.try_anyway=true",
                     "train.warmup_steps=0", "train.timed_steps=1", timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]  # a run failed; the sweep itself finished
    [sweep] = sweep_dirs(tmp_path)
    [record] = [json.loads(p.read_text()) for p in sweep.glob("*/result.json")]
    assert record["status"] == "oom", record["error"]
    assert "can't allocate memory" in record["error"] or "MemoryError" in record["error"]
    assert "this rank's host memory limit: RLIMIT_" in record["error"]
    assert "runs: 1, ok: 0, failed: 1" in (sweep / "report" / "report.md").read_text()
    assert _vmstat_oom_kills() == kills  # the kernel's OOM killer did not run: nothing was killed
