"""The GPU path, checked on a machine without a GPU: each test names the defect it guards
(a reading of the CUDA path against DeepSpeed 0.19.8 found twelve). Where a GPU itself would be
needed, the test checks what leads up to it (DeepSpeed's CUDA accelerator class by
introspection, a stand-in accelerator that records calls) and says so; the rest runs for real
in bench/gpu_check.sh on a GPU machine."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suite import metrics, results
from suite.config import ConfigError
from suite.plan import RunPlan, collective_timeout_s, plan_run, to_object
from suite.schedulers.slurm import slurm_parameters
from suite.report import analysis
from suite.workload import device

from conftest import REPO

SUITE = REPO / "suite"

_MASTER_PORT_AT_IMPORT = os.environ.get("MASTER_PORT")
_MASTER_ADDR_AT_IMPORT = os.environ.get("MASTER_ADDR")


# ---- 1. every accelerator method the suite calls exists on DeepSpeed's CUDA accelerator ----

def _accelerator_calls(tree: ast.AST) -> set:
    """Attribute names used on get_accelerator()'s result, directly or through a variable."""
    bound, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", None) == "get_accelerator":
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "get_accelerator":
                used.add(node.attr)
            elif isinstance(node.value, ast.Name) and node.value.id in bound:
                used.add(node.attr)
    return used


def test_every_accelerator_method_the_suite_calls_exists_on_the_cuda_accelerator():
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    called = set()
    for path in SUITE.rglob("*.py"):
        called |= _accelerator_calls(ast.parse(path.read_text()))
    assert {"synchronize", "set_device", "current_device_name", "device_name"} <= called
    missing = sorted(name for name in called if not hasattr(CUDA_Accelerator, name))
    assert not missing, f"not on DeepSpeed's CUDA accelerator: {missing}"
    # the defect itself: this name is on no accelerator of DeepSpeed's
    assert "get_device_name" not in called and not hasattr(CUDA_Accelerator, "get_device_name")


def test_the_scan_finds_a_call_through_a_variable():
    tree = ast.parse("accel = get_accelerator()\naccel.get_device_name()\nget_accelerator().synchronize()")
    assert _accelerator_calls(tree) == {"get_device_name", "synchronize"}


# ---- 2. on GPUs Adam/AdamW compile nothing; ops that must compile are checked first ----

def test_adam_on_gpus_is_torchs_fused_kernel_and_compiles_nothing(compose_cfg):
    plan = plan_run(compose_cfg("optimizer=adamw", "cluster.accelerator=cuda", "cluster.gpus_per_node=8"))
    assert plan.ds_config["optimizer"]["params"]["torch_adam"] is True
    assert plan.ds_config["optimizer"]["params"]["fused"] is True
    assert plan.compiled_ops == ()


def test_an_op_that_can_be_neither_loaded_nor_built_is_named():
    needed = [("fused_lamb", "optimizer=lamb"), ("cpu_adam", "strategy=zero2_offload")]
    cuda_ops = {"fused_lamb"}
    assert device.missing_ops(needed, {"cpu_adam": True}, cuda_ops, nvcc=False, cxx=True) == [
        ("fused_lamb", "optimizer=lamb", "nvcc")]
    assert device.missing_ops(needed, {}, cuda_ops, nvcc=True, cxx=True) == []
    # CPU-Adam is C++ for the host compiler: no nvcc needed, a compiler is
    assert device.missing_ops(needed, {}, cuda_ops, nvcc=False, cxx=True) == [("fused_lamb", "optimizer=lamb", "nvcc")]
    assert device.missing_ops(needed, {}, cuda_ops, nvcc=False, cxx=False) == [
        ("fused_lamb", "optimizer=lamb", "nvcc and a C++ compiler"),
        ("cpu_adam", "strategy=zero2_offload", "a C++ compiler")]
    device.check_compiled_ops(needed, "cpu")  # the CPU builds with a C++ compiler: not checked


def _cuda_accelerator():
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    return CUDA_Accelerator()  # its op-builder lookup needs no GPU


def test_which_ops_need_nvcc_is_asked_of_deepspeeds_cuda_builders():
    """The CUDA accelerator builds CPU-Adam/Adagrad with its CPU builders (TorchCPUOpBuilder,
    CppExtension), FusedAdam, FusedLamb and the quantizer with CUDAOpBuilders (CUDAExtension)."""
    from deepspeed.ops.op_builder.builder import CUDAOpBuilder

    cuda = _cuda_accelerator()
    for op in ("cpu_adam", "cpu_adagrad"):
        assert device.op_builder_class(op, cuda).NAME == op and not device.needs_nvcc(op, cuda)
    for op in ("fused_adam", "fused_lamb", "quantizer"):
        assert issubclass(device.op_builder_class(op, cuda), CUDAOpBuilder) and device.needs_nvcc(op, cuda)
    assert device.op_builder_class("no_such_op", cuda) is None and device.needs_nvcc("no_such_op", cuda)
    # on this machine DeepSpeed's own accelerator is the CPU's: its FusedAdam is C++
    assert not device.needs_nvcc("fused_adam")


@pytest.fixture
def gpu_node_without_toolkit(monkeypatch):
    """A GPU node with the torch wheel and no CUDA toolkit: no CUDA_HOME, nothing prebuilt."""
    import deepspeed.accelerator
    import deepspeed.git_version_info
    import torch.utils.cpp_extension

    cuda = _cuda_accelerator()
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: cuda)
    monkeypatch.setattr(torch.utils.cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(deepspeed.git_version_info, "installed_ops", {})


def test_zero_offload_runs_on_a_gpu_node_without_nvcc(gpu_node_without_toolkit, compose_cfg):
    """Every ZeRO-Offload run was refused there: CPU-Adam was taken to need nvcc."""
    plan = plan_run(compose_cfg("strategy=zero2_offload", "optimizer=adamw", "cluster.accelerator=cuda",
                                "cluster.gpus_per_node=2"))
    assert plan.compiled_ops and plan.compiled_ops[0][0] == "cpu_adam"
    device.check_compiled_ops(plan.compiled_ops, "cuda")
    device.check_compiled_ops([("cpu_adagrad", "strategy=zero3_offload with optimizer=adagrad")], "cuda")
    with pytest.raises(RuntimeError, match=r"fused_lamb \(asked for by optimizer=lamb; needs nvcc\)"):
        device.check_compiled_ops([("fused_lamb", "optimizer=lamb"), ("cpu_adam", "x")], "cuda")


def test_an_op_for_the_host_compiler_is_refused_without_one(gpu_node_without_toolkit, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(RuntimeError, match=r"C\+\+ compiler 'no-such-c\+\+': not on PATH\): cpu_adam \(asked for by x; needs a C\+\+ compiler\)"):
        device.check_compiled_ops([("cpu_adam", "x")], "cuda")


# ---- 3. each rank binds its own GPU before the process group, for every workload ----

class _RecordingAccelerator:
    """A stand-in for DeepSpeed's CUDA accelerator (no GPU here): records what it is asked."""

    def __init__(self):
        self.calls = []

    def set_device(self, index):
        self.calls.append(("set_device", index))

    def current_device_name(self):
        index = [a for c, a in self.calls if c == "set_device"]
        return f"cuda:{index[-1]}" if index else "cuda:0"


def test_select_device_binds_the_local_rank(monkeypatch):
    import deepspeed.accelerator

    fake = _RecordingAccelerator()
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: fake)
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert device.select_device("cuda", 5, visible_gpus=8) == "cuda:5"
    assert fake.calls == [("set_device", 5)]
    assert device.gpu_binding("cuda", 5, 8) == (5, "local rank")


def test_one_visible_device_per_task_is_the_ranks_own(monkeypatch):
    """--gpus-per-task=1 / --gpu-bind: each rank sees one GPU; ranks 1-7 were refused (or would
    have asked for a device that does not exist)."""
    import deepspeed.accelerator

    device.check_hardware("cuda", "cuda", local_rank=5, visible_gpus=1)
    fake = _RecordingAccelerator()
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: fake)
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert device.select_device("cuda", 5, visible_gpus=1) == "cuda:0"
    assert fake.calls == [("set_device", 0)]
    import os

    assert os.environ["LOCAL_RANK"] == "0"  # DeepSpeed binds cuda:LOCAL_RANK itself
    assert device.gpu_binding("cuda", 5, 1) == (0, "one visible device per task")
    assert device.gpu_binding("cpu", 1, 0) == (None, None)
    # still wrong: several visible, fewer than the local ranks; or none at all
    with pytest.raises(device.HardwareMismatch, match="local rank 3 sees 2 GPU"):
        device.check_hardware("cuda", "cuda", local_rank=3, visible_gpus=2)
    with pytest.raises(device.HardwareMismatch, match="local rank 0 sees 0 GPU"):
        device.check_hardware("cuda", "cuda", local_rank=0, visible_gpus=0)


class _Reached(Exception):
    """The rank got as far as starting the process group."""


@pytest.fixture
def rank_on_a_gpu_node(monkeypatch):
    """_run_workload up to deepspeed.init_distributed, with the device stood in for: a GPU node
    where `visible` (a list, default [8]) devices are visible; returns the calls made."""
    import deepspeed

    from suite import rank

    calls, visible = [], [8]
    monkeypatch.setattr(device, "visible_gpus", lambda: visible[0])
    monkeypatch.setattr(device, "deepspeed_accelerator", lambda: "cuda")
    monkeypatch.setattr(device, "check_compiled_ops", lambda *a: None)
    monkeypatch.setattr(device, "select_device", lambda *a: calls.append(("select_device",) + a))

    def init_distributed(**kwargs):
        calls.append(("init_distributed",))
        raise _Reached()

    monkeypatch.setattr(deepspeed, "init_distributed", init_distributed)
    monkeypatch.setattr(rank.Watchdog, "start", lambda self: self)
    monkeypatch.setattr(rank, "_binding", {}, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    return calls, visible


def _run_until_the_process_group(compose_cfg, local_rank):
    from suite import rank

    typed = to_object(compose_cfg("cluster.accelerator=cuda", "cluster.gpus_per_node=8"))
    dist = {"rank": local_rank, "world_size": 8, "local_rank": local_rank, "local_world_size": 8}
    with pytest.raises(_Reached):
        rank._run_workload(typed, plan_run(typed), dist, rank.Watchdog(lambda *a: None))


def test_the_record_says_how_the_rank_chose_its_gpu(rank_on_a_gpu_node, compose_cfg, tmp_path):
    from suite import rank

    calls, visible = rank_on_a_gpu_node
    visible[0] = 1
    _run_until_the_process_group(compose_cfg, local_rank=5)
    assert calls == [("select_device", "cuda", 5, 1), ("init_distributed",)]
    assert rank._binding == {"gpu_binding": "one visible device per task"}
    typed = to_object(compose_cfg())
    recorder = rank._Recorder(tmp_path, "s", typed, plan_run(typed), {"hostnames": ["node1"], "rank": 0})
    assert recorder.write("error", "x", {}, {})["env"]["gpu_binding"] == "one visible device per task"
    visible[0] = 8
    _run_until_the_process_group(compose_cfg, local_rank=5)
    assert rank._binding == {"gpu_binding": "local rank"}


def test_the_rank_selects_its_device_before_the_process_group_starts():
    source = (SUITE / "rank.py").read_text()
    body = source[source.index("def run_rank"):]
    assert body.index("device.select_device(") < body.index("deepspeed.init_distributed(")
    assert body.index("device.select_device(") < body.index("run_micro_benchmark(")


# ---- 4. no silent CPU fallback; one plan, shipped ----

def test_slurm_sweeps_say_what_their_nodes_have(compose_cfg):
    with pytest.raises(ConfigError, match="cluster.accelerator=auto with cluster.scheduler=slurm"):
        plan_run(compose_cfg("cluster=slurm", "cluster.accelerator=auto"))
    with pytest.raises(ConfigError, match="cluster.gpus_per_node must be set for a Slurm GPU sweep"):
        plan_run(compose_cfg("cluster=slurm", "cluster.gpus_per_node=null"))
    # the template plans for GPUs whatever the submitting machine has
    assert plan_run(compose_cfg("cluster=slurm"), local_gpus=0).accelerator == "cuda"


def test_the_plans_accelerator_wins_over_an_inherited_ds_accelerator(monkeypatch, compose_cfg):
    from suite.rank import _prepare_process

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # left over in a login shell
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    plan = plan_run(compose_cfg("cluster.accelerator=cuda", "cluster.gpus_per_node=2"))
    _prepare_process(plan, 2, {})
    import os

    assert os.environ["DS_ACCELERATOR"] == "cuda"


def test_a_rendezvous_host_that_does_not_resolve_fails_at_once(rank_on_a_gpu_node, compose_cfg, monkeypatch):
    """Every run on such a host waited out cluster.init_timeout_s before saying anything."""
    from suite import rank

    calls, _ = rank_on_a_gpu_node
    monkeypatch.setenv("MASTER_ADDR", "node7.invalid")  # .invalid: never resolves (RFC 6761)
    with pytest.raises(RuntimeError, match=r"MASTER_ADDR='node7.invalid' \(the job's first node\) does not "
                                           r"resolve.*resolvable on every node.*SUITE_MASTER_ADDR"):
        rank._run_workload(*_point(compose_cfg), rank.Watchdog(lambda *a: None))
    assert ("init_distributed",) not in calls  # before the rendezvous, not after its time-out
    rank.check_master_addr("127.0.0.1", "29500")


def _point(compose_cfg):
    typed = to_object(compose_cfg("cluster.accelerator=cuda", "cluster.gpus_per_node=8"))
    return typed, plan_run(typed), {"rank": 0, "world_size": 8, "local_rank": 0, "local_world_size": 8}


def _local_job_environment(monkeypatch, inherited: dict, ntasks: int = 2, rank: int = 1):
    """The variables a task of submitit's local executor runs with (its controller's)."""
    import os

    for name in list(os.environ):
        if name.startswith(("SUBMITIT_", "SLURM_", "MASTER_", "SUITE_MASTER")):
            monkeypatch.delenv(name)
    for name, value in {**inherited, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242",
                        "SUBMITIT_LOCAL_NTASKS": str(ntasks), "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
                        "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_GLOBALID": str(rank),
                        "SUBMITIT_LOCAL_LOCALID": str(rank)}.items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "0")  # export() overwrites them; monkeypatch restores them


def test_a_local_run_meets_on_loopback_whatever_the_machines_name(tmp_path, monkeypatch, compose_cfg):
    """MASTER_ADDR was the host name (submitit's): where it does not resolve (a laptop, a
    container), every local run waited out cluster.init_timeout_s."""
    import os
    import socket

    import submitit

    from suite import rank
    from suite.schedulers.base import PlannedRun
    from suite.schedulers.local import LocalScheduler

    inherited = {}

    class Executor:  # submitit's local executor starts the job with this process's environment
        def __init__(self, folder):
            pass

        def update_parameters(self, **kwargs):
            pass

        def submit(self, fn, *args):
            inherited.update(os.environ)
            return type("Job", (), {"done": lambda self: True, "job_id": "4242"})()

    monkeypatch.setattr(submitit, "LocalExecutor", Executor)
    monkeypatch.delenv("SUITE_MASTER_ADDR", raising=False)
    typed = to_object(compose_cfg())
    run = PlannedRun(idx=0, overrides=[], typed=typed, plan=plan_run(typed), run_dir=tmp_path, config={},
                     config_hash="h", cost=1.0)
    LocalScheduler(str(tmp_path)).submit([run], lambda: None, lambda r: ())
    assert "SUITE_MASTER_ADDR" not in os.environ  # the launcher's own is left as it was
    _local_job_environment(monkeypatch, {k: v for k, v in inherited.items() if k.startswith("SUITE_")})
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop.invalid")
    dist = rank.distributed_env()
    assert (dist["rank"], dist["world_size"], dist["hostnames"]) == (1, 2, ["laptop.invalid"])
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
    socket.getaddrinfo(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))  # what init needs


def test_without_a_schedulers_address_the_rendezvous_is_the_first_host(monkeypatch):
    import os
    import socket

    from suite import rank

    _local_job_environment(monkeypatch, {})
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-node-3")
    rank.distributed_env()
    assert os.environ["MASTER_ADDR"] == "gpu-node-3"


def test_the_rendezvous_the_tests_above_exported_is_gone_after_them():
    # they ran rank.distributed_env in this process, which exports MASTER_PORT; left behind, it
    # reached every later sweep's Slurm jobs (sbatch exports the environment) and two jobs on one
    # node listened on the same port (tests/conftest.py _rank_variables_restored)
    import os

    assert os.environ.get("MASTER_PORT") == _MASTER_PORT_AT_IMPORT
    assert os.environ.get("MASTER_ADDR") == _MASTER_ADDR_AT_IMPORT


def test_a_rank_on_other_hardware_than_planned_refuses():
    with pytest.raises(device.HardwareMismatch, match="DeepSpeed chose the 'cpu' accelerator but the run was planned for 'cuda'"):
        device.check_hardware("cuda", "cpu", local_rank=0, visible_gpus=8)
    with pytest.raises(device.HardwareMismatch, match="local rank 3 sees 2 GPU"):
        device.check_hardware("cuda", "cuda", local_rank=3, visible_gpus=2)
    device.check_hardware("cuda", "cuda", local_rank=1, visible_gpus=2)
    device.check_hardware("cpu", "cpu", local_rank=1, visible_gpus=0)


def _submit(run_dir: Path, typed, plan) -> None:
    config = results.run_config(typed, plan)
    results.write_submission(run_dir, run_id="s/r", sweep_id="s", config=config,
                             axes=results.record_axes(typed, plan), plan=plan.to_dict(),
                             scheduler="local", job_id=None)


def test_the_rank_uses_the_shipped_plan_and_never_plans_again(tmp_path, monkeypatch, compose_cfg):
    from suite import plan as planning, rank

    typed = to_object(compose_cfg("cluster.accelerator=cuda", "cluster.gpus_per_node=4", "strategy=zero2"))
    shipped = plan_run(typed)
    _submit(tmp_path, typed, shipped)
    monkeypatch.setattr(planning, "plan_run", lambda *a, **k: pytest.fail("the rank planned again"))
    assert rank._shipped_plan(tmp_path, typed) == shipped
    assert RunPlan.from_dict(json.loads(json.dumps(shipped.to_dict()))) == shipped


def test_a_rank_that_composed_another_config_refuses(tmp_path, compose_cfg):
    from suite import rank

    typed = to_object(compose_cfg("strategy=zero2"))
    _submit(tmp_path, typed, plan_run(typed))
    with pytest.raises(RuntimeError, match="composed another configuration than the launcher planned"):
        rank._shipped_plan(tmp_path, to_object(compose_cfg("strategy=zero2", "train.seed=7")))
    with pytest.raises(RuntimeError, match="submission.json is missing"):
        rank._shipped_plan(tmp_path / "elsewhere", typed)


# ---- 5. Slurm: CPUs and memory per task, and srun told the CPUs too ----

def test_slurm_defaults_for_cpus_and_memory(compose_cfg):
    typed = to_object(compose_cfg("cluster=slurm"))
    params = slurm_parameters(typed, plan_run(typed))
    assert params["cpus_per_task"] == 8
    assert params["srun_args"] == ["--cpus-per-task", "8"]  # Slurm 22.05+ does not pass it on
    assert params["mem"] == "0"  # all of the node's memory
    typed = to_object(compose_cfg("cluster=slurm", "cluster.mem_gb=512", "cluster.cpus_per_task=12"))
    params = slurm_parameters(typed, plan_run(typed))
    assert (params["mem"], params["srun_args"]) == ("512GB", ["--cpus-per-task", "12"])


def test_threads_per_rank_follow_the_cores_slurm_gave():
    assert device.threads_per_rank(8, "12", cpu_count=96) == 12
    assert device.threads_per_rank(8, None, cpu_count=96) == 12
    assert device.threads_per_rank(2, None, cpu_count=2) == 1
    assert device.threads_per_rank(4, None, cpu_count=2) == 1


def test_each_python_environment_builds_deepspeed_ops_in_its_own_folder():
    # two venvs sharing ~/.cache/torch_extensions rebuilt the shm op in every run (25-60 s each)
    assert device.extensions_environment({}, "/work/a/.venv", writable=True) == {
        "TORCH_EXTENSIONS_DIR": "/work/a/.venv/torch_extensions"}
    assert device.extensions_environment({"TORCH_EXTENSIONS_DIR": "/scratch/ops"}, "/work/a/.venv", True) == {}
    assert device.extensions_environment({"PATH": "/usr/bin:/bin"}, "/usr", writable=False) == {}  # torch's default


def test_every_build_in_an_environment_uses_its_own_ninja(tmp_path):
    # pip's ninja (1.13) in the venv and Debian's (1.11) in /usr/bin each rebuilt the op the other
    # had built: a sweep run from an activated venv, then `make test`, cost a 70 s rebuild
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ninja").touch()
    env = device.extensions_environment({"PATH": "/usr/bin:/bin", "TORCH_EXTENSIONS_DIR": "/x"}, str(tmp_path), True)
    assert env == {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}
    assert device.extensions_environment({"PATH": f"{tmp_path}/bin:/usr/bin", "TORCH_EXTENSIONS_DIR": "/x"},
                                         str(tmp_path), True) == {}  # already first


def test_the_launcher_asks_torch_for_gpus_only_where_a_gpu_driver_is(tmp_path):
    from hydra_plugins.suite_launcher.suite_launcher import gpu_device_files

    for name in ("null", "tty0", "nvidiactl", "nvidia-uvm"):  # not GPUs themselves
        (tmp_path / name).touch()
    assert gpu_device_files(tmp_path) == []
    for name in ("nvidia0", "nvidia1", "kfd"):
        (tmp_path / name).touch()
    assert gpu_device_files(tmp_path) == ["kfd", "nvidia0", "nvidia1"]


# ---- 6. time-outs: the suite's watchdog fires first; a peer's error is the run's status ----

def test_collectives_wait_longer_than_the_suites_own_limits():
    assert collective_timeout_s(300, 900) == 960
    assert collective_timeout_s(600, 30) == 660


def test_the_earliest_real_error_across_ranks_is_the_runs_status():
    peer_lost = {"status": "error", "message": "RuntimeError: Connection closed by peer", "time": 10.0}
    oom = {"status": "oom", "message": "OutOfMemoryError: CUDA out of memory", "time": 12.0}
    later = {"status": "error", "message": "RuntimeError: boom", "time": 13.0}
    # rank 0 saw its peer vanish first, but rank 3's OOM is what happened
    assert results.root_cause({0: peer_lost, 3: oom, 5: later}) == (3, oom)
    assert results.root_cause({0: peer_lost}) == (0, peer_lost)
    assert results.root_cause({}) is None
    tie = {"status": "error", "message": "x", "time": 1.0}
    assert results.root_cause({4: tie, 2: tie})[0] == 2


def test_a_record_written_for_a_dead_run_takes_the_ranks_own_error(tmp_path, compose_cfg):
    """The fallback record (the run's rank 0 died) used to ignore the ranks' error files."""
    typed = to_object(compose_cfg())
    _submit(tmp_path, typed, plan_run(typed))
    (tmp_path / ".rank3.error").write_text(json.dumps(
        {"status": "oom", "message": "OutOfMemoryError: CUDA out of memory", "time": 1.0}))
    (tmp_path / ".rank1.error").write_text(json.dumps(
        {"status": "error", "message": "DistBackendError: NCCL communicator was aborted", "time": 2.0}))
    results.write_record_from_submission(tmp_path, status="error", error="the run ended without a record")
    record = results.read_record(tmp_path / results.RESULT_FILE)
    assert record["status"] == "oom" and record["error"] == "rank 3: OutOfMemoryError: CUDA out of memory"


def test_the_watchdog_ends_a_rendezvous_that_never_completes():
    script = ("import sys, time\nsys.path.insert(0, %r)\nfrom suite.rank import Watchdog\n"
              "w = Watchdog(lambda phase, step: print('ended:', phase, step, flush=True))\n"
              "w.expect('rendezvous', 0.3)\nw.start()\ntime.sleep(30)\n" % str(REPO))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout.strip() == "ended: rendezvous -1"


# ---- 7. DeepSpeed's throughput timer does not synchronise every step ----

def test_deepspeeds_throughput_timer_is_off(compose_cfg):
    timers = plan_run(compose_cfg()).ds_config["timers"]
    assert timers == {"throughput": {"enabled": False, "synchronized": False}}
    from deepspeed.utils.config import get_timers_config

    assert get_timers_config({"timers": timers}).synchronized is False


# ---- 8. exact device names; MFU above 100% is a measurement error ----

@pytest.mark.parametrize("name,key,bf16", [
    ("NVIDIA A100-SXM4-40GB", "A100", 312.0), ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100-PCIE-40GB", "A100", 312.0), ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4), ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5), ("NVIDIA H200", "H200", 989.4),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5),  # a substring test gave it the SXM part's 989.4
    ("NVIDIA GH200 480GB", "GH200", 989.4), ("NVIDIA GH200 144G HBM3e", "GH200", 989.4),
    ("NVIDIA B200", "B200", 2250.0), ("NVIDIA GB200", "GB200", 2500.0),
    ("NVIDIA B300 SXM6 AC", "B300", 2250.0), ("NVIDIA L40S", "L40S", 362.05),
    ("AMD Instinct MI300X", "MI300X", 1307.4), ("AMD Instinct MI325X", "MI325X", 1307.4),
])
def test_the_names_torch_reports_map_to_their_own_peak(name, key, bf16):
    assert metrics.device_key(name) == key
    assert metrics.peak_tflops(name, "bf16") == bf16


def test_unknown_or_partial_names_have_no_peak():
    for name in ("NVIDIA L40", "NVIDIA H100", "H200", "NVIDIA GeForce RTX 4090", "AMD EPYC 9654", "", None):
        assert metrics.peak_tflops(name, "bf16") is None, name
    assert metrics.device_key("nvidia  h200   nvl") == "H200 NVL"  # case and spacing aside


def test_a_share_above_100_percent_is_flagged_not_shown(tmp_path):
    import pandas as pd

    configs = pd.DataFrame({"mfu": [0.5, 1.3, None], "hfu": [0.6, 1.4, None],
                            "of_gemm_ceiling": [0.7, 0.9, 1.01]})
    assert analysis.measurement_errors(configs).tolist() == ["", "MFU, HFU", "of GEMM ceiling"]
    from suite.report.render import share as _share

    assert [_share(v) for v in (0.5, 1.3, None)] == ["50.0%", "error (>100%)", "—"]


def test_a_gpu_without_a_peak_is_named_in_the_report():
    import pandas as pd

    frame = pd.DataFrame({"accelerator": ["cuda", "cuda", "cpu", "cuda"],
                          "status": ["ok", "ok", "ok", "error"],  # failed before it saw a GPU
                          "env_device_name": ["NVIDIA H200", "NVIDIA RTX PRO 6000", "AMD EPYC", "AMD EPYC"]})
    assert analysis.unknown_gpus(frame) == ["NVIDIA RTX PRO 6000"]


# ---- 9. Lamb under ZeRO (tests/test_plan.py); MiCS: DeepSpeed 0.19 removed it ----

def test_mics_is_refused_with_the_reason(compose_cfg):
    with pytest.raises(ConfigError, match="MiCS was removed from DeepSpeed"):
        plan_run(compose_cfg("strategy=zero3", "strategy.mics_shard_size=8", "cluster.accelerator=cuda",
                             "cluster.gpus_per_node=8"))


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload",
                                      "pp2_zero1", "tp2_zero2", "sp2_zero3"])
def test_no_plan_carries_a_key_deepspeed_has_removed(compose_cfg, strategy):
    # DeepSpeed's own list of removed keys (a private function: there is no public validator
    # that runs without a process group); a removed key fails the run at deepspeed.initialize
    from deepspeed.runtime.config import _reject_removed_config_keys

    plan = plan_run(compose_cfg(f"strategy={strategy}", "strategy.zero_quantized_weights="
                                f"{str(strategy.startswith(('zero3', 'sp2_zero3'))).lower()}",
                                "cluster.accelerator=cuda", "cluster.gpus_per_node=4"))
    _reject_removed_config_keys(plan.ds_config)


# ---- 12. micro-benchmarks: sizes checked, one run per distinct measurement ----

def test_a_micro_benchmark_runs_once_whatever_the_training_axes(tmp_path):
    from conftest import run_sweep

    done = run_sweep(tmp_path, "workload=gemm", "strategy=ddp,zero1,zero2", "optimizer=adamw,sgd_momentum",
                     "submit.dry_run=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Dry run: 1 runs would start" in done.stdout
    done = run_sweep(tmp_path, "workload=allreduce", "strategy=ddp,zero1", "workload.include_bucket_sizes=true",
                     "submit.dry_run=true")  # the buckets are part of what it measures: equal here
    assert "Dry run: 1 runs would start" in done.stdout
    done = run_sweep(tmp_path, "workload=gemm", "submit.repeats=2", "submit.dry_run=true")
    assert "Dry run: 2 runs would start" in done.stdout  # repeats are distinct measurements


@pytest.mark.parametrize("overrides,message", [
    (["workload=gemm", "workload.gemm_sizes=[0]"], "workload.gemm_sizes[0]=0 must be >= 1"),
    (["workload=gemm", "workload.gemm_sizes=[]"], "workload.gemm_sizes is empty"),
    (["workload=allreduce", "workload.message_bytes=[1]"], "workload.message_bytes[0]=1 must be >= 4"),
    (["workload=allreduce", "workload.collectives=[]"], "workload.collectives is empty"),
])
def test_micro_benchmark_sizes_are_checked_before_submission(compose_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        plan_run(compose_cfg(*overrides))
    assert message in str(err.value)


# ---- telemetry: null on the CPU, never guessed ----

def test_energy_figures_are_null_without_telemetry_and_derived_with_it():
    none = metrics.energy_metrics(None, tokens=1e6)
    assert none["energy_j"] is None and none["tokens_per_joule"] is None and none["throttled"] is None
    run = metrics.energy_metrics({"energy_j": 2000.0, "power_mean_w": 650.0, "sm_clock_mean_mhz": 1980.0,
                                  "sm_clock_min_mhz": 1755.0, "temperature_max_c": 63,
                                  "throttle_reasons": ["SwPowerCap"], "throttled": True}, tokens=1.5e6)
    assert run["tokens_per_joule"] == 750.0 and run["throttled"] is True


def test_a_stale_op_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """A rank killed while torch held its just-in-time build lock left the file, and every later
    run waited on it until its rendezvous timed out (seen on the local cluster after scancel)."""
    import os

    from suite.workload.device import clear_stale_build_locks

    stale, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "fused_adam" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    os.utime(stale, (1_000.0, 1_000.0))
    os.utime(fresh, (1_500.0, 1_500.0))
    assert clear_stale_build_locks(str(tmp_path), now=1_700.0, older_than_s=600.0) == [str(stale)]
    assert not stale.exists() and fresh.exists()  # 700 s old: stale; 200 s: a build may be running
    assert clear_stale_build_locks(None, now=1_700.0) == []


def test_prebuild_loads_the_op_runs_load_where_runs_look_for_it(tmp_path):
    """make install builds the CPU shared-memory op ahead (python -m suite.prebuild): in CI the
    first run had paid its build (about a minute) inside its wall time, and the autotune test
    charged it to the search it compares with the grid. Here it loads from the cache the
    install made, in the folder the ranks use; an accelerator without ops to prebuild is no error."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    done = subprocess.run([sys.executable, "-m", "suite.prebuild", "cpu"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ShareMemCommBuilder ready" in done.stdout and os.path.join(sys.prefix, "torch_extensions") in done.stdout
    assert os.path.exists(os.path.join(sys.prefix, "torch_extensions", "deepspeed_shm_comm", "deepspeed_shm_comm.so"))
    from suite import prebuild

    assert prebuild.main(["cuda"]) == 0


def test_py_cpuinfo_is_asked_once_per_process(monkeypatch):
    # DeepSpeed's CPU op builders ask twice per op they load (bench/op_load.py: 4 calls, 5.1 s
    # for FusedAdam and CPUAdam, against 1 call, 1.4 s)
    import cpuinfo

    calls = []
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: calls.append(1) or {"arch": "X86_64", "flags": ["avx2"]})
    assert device.ask_for_the_cpu_once()
    first, again = cpuinfo.get_cpu_info(), cpuinfo.get_cpu_info()
    assert first is again and first["arch"] == "X86_64" and len(calls) == 1
    assert device.ask_for_the_cpu_once() and len(calls) == 1  # asking twice keeps the one memo
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder  # what DeepSpeed's builders ask, answered

    builder = CPUAdamBuilder()
    assert (builder.cpu_arch(), builder.simd_width()) == ("-march=native", "-D__AVX256__") and len(calls) == 1


# ---- TF32: every run says how fp32 matmuls run, and its record carries it ----

@pytest.fixture
def process_state(monkeypatch):
    """What _prepare_process changes in this process, put back afterwards."""
    import os

    import torch

    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    for name in ("DS_ACCELERATOR", "OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR", "PATH", "NVIDIA_TF32_OVERRIDE",
                 "SLURM_CPUS_PER_TASK"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]
    torch.set_num_threads(saved[2])


@pytest.mark.parametrize("tf32,precision", [(False, "highest"), (True, "high")])
def test_the_fp32_matmul_precision_is_set_in_every_run_and_recorded(process_state, monkeypatch, compose_cfg,
                                                                     tmp_path, tf32, precision):
    """Site images (NGC) allow TF32 for fp32 matmuls: an fp32 GEMM ceiling or fp32 MFU was then
    measured against the fp32 peak, and no record said so."""
    import torch

    from suite import rank

    torch.set_float32_matmul_precision("high" if not tf32 else "highest")  # what the image left
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    torch.backends.cudnn.allow_tf32 = not tf32
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    overrides = ["workload=gemm"] + (["precision.tf32=true"] if tf32 else [])
    typed = to_object(compose_cfg(*overrides))
    plan = plan_run(typed)
    rank._prepare_process(plan, 1, {}, typed.precision.tf32)  # what run_rank calls for every workload
    assert torch.get_float32_matmul_precision() == precision
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    record = rank._Recorder(tmp_path, "s", typed, plan, {"hostnames": ["node1"], "rank": 0}).write("ok", None, {}, {})
    on_disk = results.read_record(tmp_path / results.RESULT_FILE)
    for env in (record["env"], on_disk["env"]):
        assert env["fp32_matmul_precision"] == precision
        assert env["allow_tf32"] == {"cuda_matmul": tf32, "cudnn": tf32}
        assert env["nvidia_tf32_override"] == "1"


def test_run_rank_passes_the_tf32_setting_to_the_preparation_every_workload_has():
    source = (SUITE / "rank.py").read_text()
    body = source[source.index("def run_rank"):source.index("def _run_workload")]
    assert "_prepare_process(plan, dist[\"local_world_size\"], typed.cluster.env, typed.precision.tf32)" in body


def test_tf32_left_on_by_torchs_newer_per_backend_settings_is_turned_off(process_state):
    """torch >= 2.9 also has per-backend settings (torch.backends.cudnn.conv.fp32_precision):
    set by an image, they outrank cudnn.allow_tf32, and reading it raised while they disagreed."""
    import torch

    if not hasattr(torch.backends.cudnn, "conv"):
        pytest.skip("this torch has only the legacy TF32 settings")
    torch.backends.fp32_precision = "tf32"  # as an image's sitecustomize might
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        assert device.set_fp32_matmul_precision(False) == "highest"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision) == ("ieee", "ieee")
        assert results.fp32_matmul_settings()["allow_tf32"] == {"cuda_matmul": False, "cudnn": False}
    finally:
        torch.backends.fp32_precision = "none"
        device.set_fp32_matmul_precision(False)  # one consistent state again (process_state restores)


def test_a_local_runs_record_says_it_met_on_loopback_in_ieee_fp32(tmp_path):
    """For real, through submitit's local executor: the ranks' rendezvous and the fp32 matmul
    precision as the record has them (a GEMM ceiling, 2 CPU ranks, a few seconds)."""
    from conftest import run_sweep

    done = run_sweep(tmp_path, "workload=gemm", "workload.gemm_sizes=[64]", "workload.gemm_dtypes=[fp32]")
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.rglob(results.RESULT_FILE)
    record = results.read_record(path)
    assert record["status"] == "ok", record["error"]
    env = record["env"]
    assert env["variables"]["MASTER_ADDR"] == "127.0.0.1"
    assert (env["fp32_matmul_precision"], env["allow_tf32"]) == ("highest", {"cuda_matmul": False, "cudnn": False})
    assert env["gpu_binding"] is None  # the CPU
