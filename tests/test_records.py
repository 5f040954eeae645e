"""What a run folder holds, field by field: the record (result.json) of every way a run ends
(its own, the launcher's for a run that left none, a node failure, an invalid point), the
environment it captures (redacted), and the files that reproduce it (engine config, rerun.sh).
In-process and fast: the clock, the host name, the shell-outs (git, nvidia-smi, /proc/cpuinfo)
and CUDA are stood in for where they would make a value unknown."""
import hashlib
import io
import json
import os
import platform
import re
import socket
import stat
import subprocess
from pathlib import Path

import deepspeed
import pytest
import torch

from suite import results
from suite.plan import plan_run, to_object

TINY = 169_728  # the tiny GPT's parameters (tests/test_models.py)
T0, T1, T2 = "2024-05-01T10:00:00+00:00", "2024-05-01T10:05:00+00:00", "2024-05-01T10:09:00+00:00"


@pytest.fixture
def clock(monkeypatch):
    """now_iso() answers T0, T1, T2 in turn, so that a record's times are known exactly."""
    times = iter((T0, T1, T2))
    monkeypatch.setattr(results, "now_iso", lambda: next(times))


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "login1")
    return "login1"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- small pure parts ----

def test_now_is_utc_to_the_second():
    # an explicit +00:00 offset: records of hosts in other time zones compare as written
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", results.now_iso())


def test_config_hash_is_the_sha256_of_the_canonical_json_whatever_the_key_order():
    # canonical: keys sorted at every level, no spaces -> {"a":{"x":"s","y":null},"b":[1,2]}
    canonical = b'{"a":{"x":"s","y":null},"b":[1,2]}'
    expected = hashlib.sha256(canonical).hexdigest()[:16]
    assert results.config_hash({"b": [1, 2], "a": {"y": None, "x": "s"}}) == expected
    assert results.config_hash({"a": {"x": "s", "y": None}, "b": [1, 2]}) == expected
    assert len(expected) == 16


def test_config_hash_reads_a_value_json_lacks_as_its_text():
    # a value JSON has no type for is hashed by its str(), here a Path: the same hash as the
    # config holding the string "/data/tokens.bin"
    assert results.config_hash({"path": Path("/data/tokens.bin")}) \
        == hashlib.sha256(b'{"path":"/data/tokens.bin"}').hexdigest()[:16]


def test_redaction_reaches_into_lists():
    config = {"setup": ["module load cuda", "pip download --index-url https://me:pw@pypi.example/simple x"],
              "env": {"HF_TOKEN": ["a", "b"]}}
    assert results.redact("cluster", config) == {
        "setup": ["module load cuda", "pip download --index-url https://<redacted>@pypi.example/simple x"],
        "env": {"HF_TOKEN": ["<redacted>", "<redacted>"]}}  # a list under a secret name: every item


def test_a_submitit_time_limit_is_a_timeout_and_any_other_unfinished_job_preempted():
    from submitit.core.utils import UncompletedJobError

    # submitit's own message on Slurm's signal before the time limit (job_environment.py)
    assert results.classify_exception(UncompletedJobError(
        "Job not requeued because: timed-out and not checkpointable.")) == "timeout"
    assert results.classify_exception(UncompletedJobError(
        "Job not requeued because: preempted and not checkpointable.")) == "preempted"


def test_the_root_cause_is_the_earliest_error_and_the_lower_rank_breaks_a_tie():
    errors = {0: {"status": "error", "message": "boom", "time": 9.0},
              3: {"status": "oom", "message": "CUDA out of memory", "time": 2.0},
              2: {"status": "error", "message": "assert failed", "time": 4.0}}
    assert results.root_cause(errors) == (3, errors[3])  # the earliest, though not rank 0
    errors[1] = {"status": "oom", "message": "CUDA out of memory", "time": 2.0}
    assert results.root_cause(errors) == (1, errors[1])  # 1 and 3 at once: the lower rank


def test_error_files_of_two_digit_ranks_and_half_written_ones(tmp_path):
    """A 16-rank run: rank 12's file is rank 12's (not 1's); files still being written are
    skipped, and do not hide the ranks listed after them."""
    for rank in (12, 3):
        results.rank_error_file(tmp_path, rank).write_text(
            json.dumps({"status": "oom", "message": f"rank {rank} out of memory", "time": float(rank)}))
    for rank in (5, 7, 9, 14):
        results.rank_error_file(tmp_path, rank).write_text('{"status": "oo')  # being written
    for rank in (11, 15):
        results.rank_error_file(tmp_path, rank).write_text(
            json.dumps({"status": "error", "message": "x", "time": 1.0}))
    assert sorted(results.read_rank_errors(tmp_path)) == [3, 11, 12, 15]
    assert results.read_rank_errors(tmp_path)[12]["message"] == "rank 12 out of memory"


def test_a_record_has_every_field_in_the_documented_order():
    record = results.make_record(
        run_id="sw/0_tiny", sweep_id="sw", status="oom", error="CUDA out of memory",
        config={"model": {"name": "tiny"}, "cluster": {"env": {"HF_TOKEN": "t"}}},
        axes={"model": "tiny", "nodes": 2}, metrics={"tokens_per_s": 10.0, "loss_last": float("inf")},
        env={"hostname": "node1"}, started_at=T0, finished_at=T1)
    safe = {"model": {"name": "tiny"}, "cluster": {"env": {"HF_TOKEN": "<redacted>"}}}
    assert list(record.items()) == [
        ("schema_version", 1), ("run_id", "sw/0_tiny"), ("sweep_id", "sw"), ("status", "oom"),
        ("error", "CUDA out of memory"), ("model", "tiny"), ("nodes", 2), ("config", safe),
        ("config_hash", results.config_hash(safe)),  # of the redacted config: the secret is not in it
        ("metrics", {"tokens_per_s": 10.0, "loss_last": None}), ("env", {"hostname": "node1"}),
        ("started_at", T0), ("finished_at", T1)]


# ---- writing a record ----

def test_result_json_is_indented_keeps_the_records_order_and_is_readable_by_everyone(tmp_path):
    path = results.write_record(tmp_path, {"schema_version": 1, "status": "ok", "metrics": {"loss": 1.5}})
    # two-space indent, keys as the record has them (sorted would put metrics first)
    assert path.read_text() == '{\n  "schema_version": 1,\n  "status": "ok",\n  "metrics": {\n    "loss": 1.5\n  }\n}'
    assert mode(path) == 0o644  # not mkstemp's private 0o600


def test_the_record_is_written_to_a_hidden_temporary_file_beside_it(tmp_path, monkeypatch):
    """Beside it: os.replace is atomic only within one file system. Hidden and named
    .result.*.tmp: nothing that globs a sweep for records reads half of one."""
    seen = []
    real_dump = json.dump

    def dump(obj, f, **kwargs):
        seen.extend(os.listdir(tmp_path / "run"))
        real_dump(obj, f, **kwargs)

    monkeypatch.setattr(json, "dump", dump)
    results.write_record(tmp_path / "run", {"status": "ok"})
    assert len(seen) == 1 and re.fullmatch(r"\.result\.[^/]+\.tmp", seen[0]), seen
    assert os.listdir(tmp_path / "run") == ["result.json"]


def test_a_record_with_nan_is_refused_and_the_previous_one_kept(tmp_path):
    """Strict JSON: NaN is no JSON value (make_record turns it into null; a record built
    another way must not slip it into result.json)."""
    path = results.write_record(tmp_path, {"status": "ok"})
    with pytest.raises(ValueError):
        results.write_record(tmp_path, {"status": "ok", "loss": float("nan")})
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_value_json_lacks_is_written_as_its_text(tmp_path):
    # by its str(), here a Path, rather than failing the write and leaving no record
    path = results.write_record(tmp_path, {"status": "ok", "env": {"cwd": Path("/work/suite")}})
    assert results.read_record(path) == {"status": "ok", "env": {"cwd": "/work/suite"}}


# ---- the sweep axes and the config a record holds ----

def test_record_axes_are_the_config_and_the_plans_values(compose_cfg):
    typed = to_object(compose_cfg("strategy=zero2", "optimizer=adam", "cluster.cpu_ranks=4",
                                  "train.micro_batch_size=3", "train.grad_accum_steps=2",
                                  "train.repeat_index=1", "train.activation_checkpointing=full",
                                  "train.check_parity=true"))
    axes = results.record_axes(typed, plan_run(typed))
    assert axes == {
        "workload": "train", "data": "synthetic", "model": "tiny", "model_family": "gpt",
        "strategy": "zero2", "engine": "deepspeed", "zero_stage": 2, "offload_optimizer": False,
        "offload_params": False, "optimizer": "adam",
        "precision": "fp32",  # precision=auto on CPUs
        "accelerator": "cpu",
        "world_size": 4, "data_parallel": 4,  # 1 node x 4 CPU ranks, no model parallelism
        "tensor_parallel": 1, "pipeline_parallel": 1, "sequence_parallel": 1,
        "activation_checkpointing": "full", "compile": False, "check_parity": True, "scaling": "none",
        "repeat_index": 1, "nodes": 1, "ranks_per_node": 4, "micro_batch_size": 3, "grad_accum_steps": 2,
        "global_batch_size": 24,  # 3 per rank x 2 accumulation steps x 4 data-parallel ranks
        "seq_len": 64, "n_params": TINY}


def test_a_pytorch_baseline_records_its_engine(compose_cfg):
    typed = to_object(compose_cfg("strategy=torch_ddp"))
    assert results.record_axes(typed, plan_run(typed))["engine"] == "torch_ddp"


def test_a_micro_benchmark_has_no_training_axes(compose_cfg):
    typed = to_object(compose_cfg("workload=gemm", "train.repeat_index=2"))
    axes = results.record_axes(typed, plan_run(typed))
    assert {k: v for k, v in axes.items() if v is not None} == {
        "workload": "gemm", "precision": "fp32", "accelerator": "cpu", "world_size": 2,
        "repeat_index": 2, "nodes": 1, "ranks_per_node": 2}
    # null, not left out nor "": a column of the report holds nothing for them
    assert len(axes) == 29 and axes["model"] is None and axes["n_params"] is None


def test_a_training_runs_config_is_every_group_but_the_sweep_switches_redacted(compose_cfg):
    typed = to_object(compose_cfg("+cluster.env.NCCL_DEBUG=INFO", "+cluster.env.HF_TOKEN=hunter2",
                                  "cluster.setup=[module load cuda]"))
    config = results.run_config(typed, plan_run(typed))
    assert list(config) == ["model", "strategy", "optimizer", "precision", "cluster", "train",
                            "workload", "data"]  # no submit, no report
    assert config["cluster"]["env"] == {"NCCL_DEBUG": "INFO", "HF_TOKEN": "<redacted>"}
    assert config["cluster"]["setup"] == ["module load cuda"]
    assert config["optimizer"]["betas"] == [0.9, 0.95]  # adamw's
    assert config["data"]["token_dtype"] == "uint16"


def test_a_micro_benchmarks_config_is_what_it_measures(compose_cfg):
    typed = to_object(compose_cfg("workload=gemm", "train.repeat_index=2"))
    config = results.run_config(typed, plan_run(typed))
    assert list(config) == ["workload", "cluster", "train"] and config["train"] == {"repeat_index": 2}
    assert config["workload"]["name"] == "gemm" and config["cluster"]["cpu_ranks"] == 2
    # the model does not change a GEMM benchmark: another model, the same configuration
    other = to_object(compose_cfg("workload=gemm", "train.repeat_index=2", "model=llama_tiny"))
    assert results.run_config(other, plan_run(other)) == config


def test_which_fields_make_a_micro_benchmarks_config():
    config = {"workload": {"name": "allreduce", "include_bucket_sizes": False},
              "cluster": {"nodes": 2}, "train": {"repeat_index": 3, "seed": 7},
              "model": {"name": "tiny"}, "optimizer": {"name": "adamw"},
              "strategy": {"name": "zero2", "reduce_bucket_size": 5, "allgather_bucket_size": 6},
              "precision": {"name": "bf16", "loss_scale": 0.0}}
    assert results._micro_benchmark_config(config) == {
        "workload": {"name": "allreduce", "include_bucket_sizes": False}, "cluster": {"nodes": 2},
        "train": {"repeat_index": 3}}
    config["workload"]["include_bucket_sizes"] = True  # a collective at ZeRO's bucket sizes
    assert results._micro_benchmark_config(config) == {
        "workload": {"name": "allreduce", "include_bucket_sizes": True}, "cluster": {"nodes": 2},
        "train": {"repeat_index": 3},
        "strategy": {"reduce_bucket_size": 5, "allgather_bucket_size": 6}, "precision": {"name": "bf16"}}
    config["precision"]["tf32"] = True  # a GEMM in TF32 is another measurement
    assert results._micro_benchmark_config(config)["precision"] == {"name": "bf16", "tf32": True}
    config["workload"]["include_bucket_sizes"] = False
    assert results._micro_benchmark_config(config)["precision"] == {"tf32": True}
    config["precision"]["tf32"] = False  # the default adds nothing: earlier nights' keys stand
    assert "precision" not in results._micro_benchmark_config(config)


def test_a_gemm_ceiling_in_tf32_is_planned_apart_from_the_fp32_one(compose_cfg):
    fp32, tf32 = (to_object(compose_cfg("workload=gemm", *extra)) for extra in ([], ["precision.tf32=true"]))
    assert results.config_hash(results.run_config(fp32, plan_run(fp32))) != \
        results.config_hash(results.run_config(tf32, plan_run(tf32)))


# ---- the environment ----

def _clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(results._ENV_PREFIXES) or name.startswith("SLURM"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


def test_the_environment_of_a_cpu_run(monkeypatch, host):
    _clean_environment(monkeypatch)
    for name, value in {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "4", "MASTER_ADDR": "10.0.0.1",
                        "SUITE_API_KEY": "k", "SUITE_MIRROR": "https://me:pw@mirror.example/x",
                        "HF_TOKEN": "t", "SLURM_JOB_ID": "1234", "SLURM_ARRAY_JOB_ID": "1200",
                        "SLURM_ARRAY_TASK_ID": "34", "SLURM_RESTART_COUNT": "2",
                        "SLURM_CPUS_PER_TASK": "8"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(results, "_cpu_name", lambda: "Intel(R) Xeon(R) Platinum 8480+")
    monkeypatch.setattr(results, "_driver_version", lambda: "asked on a CPU run")
    monkeypatch.setattr(results, "_git_revision", lambda: "0123abcd")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert results.capture_environment(["node1", "node2"]) == {
        "python": platform.python_version(), "torch": torch.__version__,
        "deepspeed": deepspeed.__version__, "cuda": torch.version.cuda,
        "nccl": None, "driver": None,
        "device_name": "Intel(R) Xeon(R) Platinum 8480+", "device_count": 16,  # the CPU's cores
        "hostname": host, "hostnames": ["node1", "node2"],
        "slurm_job_id": "1234", "slurm_array_job_id": "1200", "slurm_array_task_id": "34",
        "slurm_restart_count": 2, "git_revision": "0123abcd",
        # how fp32 matmuls ran (the rank sets it: IEEE fp32 unless precision.tf32)
        "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "allow_tf32": {"cuda_matmul": torch.backends.cuda.matmul.allow_tf32,
                       "cudnn": torch.backends.cudnn.allow_tf32},
        "nvidia_tf32_override": None,
        # the variables that change a measurement, sorted, secrets redacted; HF_TOKEN,
        # SLURM_RESTART_COUNT and SLURM_CPUS_PER_TASK have no listed prefix
        "variables": {"DS_ACCELERATOR": "cpu", "MASTER_ADDR": "10.0.0.1", "NCCL_DEBUG": "INFO",
                      "OMP_NUM_THREADS": "4", "SLURM_ARRAY_JOB_ID": "1200", "SLURM_ARRAY_TASK_ID": "34",
                      "SLURM_JOB_ID": "1234", "SUITE_API_KEY": "<redacted>",
                      "SUITE_MIRROR": "https://<redacted>@mirror.example/x"}}


@pytest.mark.parametrize("restarts", [None, ""])
def test_outside_slurm_there_are_no_job_ids_no_restarts_and_one_host(monkeypatch, host, restarts):
    _clean_environment(monkeypatch)
    if restarts is not None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = results.capture_environment()
    assert {k: env[k] for k in ("hostnames", "slurm_job_id", "slurm_array_job_id", "slurm_array_task_id",
                                "slurm_restart_count")} == {
        "hostnames": [host], "slurm_job_id": None, "slurm_array_job_id": None,
        "slurm_array_task_id": None, "slurm_restart_count": 0}
    assert env["variables"] == {"DS_ACCELERATOR": "cpu"}


def test_the_record_carries_how_fp32_matmuls_ran(monkeypatch, host):
    _clean_environment(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        env = results.capture_environment()
        assert (env["fp32_matmul_precision"], env["allow_tf32"], env["nvidia_tf32_override"]) == (
            "high", {"cuda_matmul": True, "cudnn": True}, "0")
        assert env["variables"]["NVIDIA_TF32_OVERRIDE"] == "0"
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def test_the_environment_of_a_gpu_run(monkeypatch, host):
    _clean_environment(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 21, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(results, "_driver_version", lambda: "550.54.15")
    monkeypatch.setattr(results, "_cpu_name", lambda: "the CPU, asked on a GPU run")
    env = results.capture_environment()
    assert {k: env[k] for k in ("nccl", "driver", "device_name", "device_count")} == {
        "nccl": "2.21.5", "driver": "550.54.15", "device_name": "NVIDIA H200", "device_count": 8}


def test_a_build_whose_nccl_version_fails_records_none(monkeypatch, host):
    def rccl():  # ROCm builds report RCCL differently
        raise RuntimeError("no NCCL")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda.nccl, "version", rccl)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "AMD Instinct MI300X")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(results, "_driver_version", lambda: None)
    assert results.capture_environment()["nccl"] is None


CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
           "flags\t\t: fpu vme\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")


def _cpuinfo(monkeypatch, text):
    def fake_open(path, *args, **kwargs):
        if path != "/proc/cpuinfo" or text is None:
            raise FileNotFoundError(path)
        return io.StringIO(text)

    monkeypatch.setattr(results, "open", fake_open, raising=False)  # the module's open()


def test_the_cpu_is_named_by_the_first_model_name_of_proc_cpuinfo(monkeypatch):
    _cpuinfo(monkeypatch, CPUINFO)
    assert results._cpu_name() == "Intel(R) Xeon(R) Platinum 8480+"
    # everything after the first colon is the name, colons and all
    _cpuinfo(monkeypatch, "model name\t: Virtual CPU: host passthrough\n")
    assert results._cpu_name() == "Virtual CPU: host passthrough"


def test_without_proc_cpuinfo_the_cpu_is_named_by_platform(monkeypatch):
    _cpuinfo(monkeypatch, None)  # macOS, say
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert results._cpu_name() == "arm"
    monkeypatch.setattr(platform, "processor", lambda: "")  # platform does not know either
    assert results._cpu_name() == "cpu"


def _fake_run(monkeypatch, calls, returncode=0, stdout="", raises=None):
    def run(args, **kwargs):
        calls.append((args, kwargs))
        if raises:
            raise raises
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(subprocess, "run", run)


def test_the_driver_version_is_nvidia_smis_first_line(monkeypatch):
    calls = []
    _fake_run(monkeypatch, calls, stdout="550.54.15\n")
    assert results._driver_version() == "550.54.15"
    # its output captured as text, and a bound on a hung driver
    assert calls == [(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                      {"capture_output": True, "text": True, "timeout": 10})]


@pytest.mark.parametrize("returncode,stdout,raises", [
    (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", None),
    (0, "", None),  # no GPU listed
    (0, "", FileNotFoundError("nvidia-smi")),  # not installed
    (0, "", subprocess.TimeoutExpired("nvidia-smi", 10)),  # a hung driver
])
def test_no_driver_version_when_nvidia_smi_cannot_say(monkeypatch, returncode, stdout, raises):
    _fake_run(monkeypatch, [], returncode, stdout, raises)
    assert results._driver_version() is None


def test_the_git_revision_is_asked_of_the_suites_own_checkout(monkeypatch):
    calls = []
    sha = "0123456789abcdef0123456789abcdef01234567"
    _fake_run(monkeypatch, calls, stdout=sha + "\n")
    assert results._git_revision() == sha
    # the suite's folder, whatever the working directory (a sweep may run from anywhere)
    assert calls == [(["git", "rev-parse", "--verify", "-q", "HEAD"],
                      {"cwd": Path(results.__file__).parent, "capture_output": True, "text": True,
                       "timeout": 5})]


@pytest.mark.parametrize("returncode,raises", [(1, None),  # no commit yet / not a checkout
                                                (0, FileNotFoundError("git")),  # git not installed
                                                (0, subprocess.TimeoutExpired("git", 5))])
def test_no_git_revision_when_git_cannot_say(monkeypatch, returncode, raises):
    _fake_run(monkeypatch, [], returncode, "", raises)
    assert results._git_revision() is None


def test_this_checkouts_git_revision_is_a_commit():
    assert re.fullmatch(r"[0-9a-f]{40}", results._git_revision() or "")


# ---- records the launcher writes ----

SUBMISSION = dict(run_id="sw/0_tiny", sweep_id="sw",
                  config={"model": {"name": "tiny"}, "cluster": {"env": {"HF_TOKEN": "<redacted>"}}},
                  axes={"model": "tiny", "nodes": 2}, plan={"nodes": 2, "ranks_per_node": 4})


def test_a_submission_creates_its_run_folder_and_is_indented(tmp_path, clock):
    path = results.write_submission(tmp_path / "sw" / "0_tiny", **SUBMISSION, scheduler="slurm", job_id=None)
    assert path == tmp_path / "sw" / "0_tiny" / "submission.json"
    assert path.read_text().startswith('{\n  "run_id": "sw/0_tiny",\n  "sweep_id": "sw",\n')
    assert json.loads(path.read_text())["submitted_at"] == T0


@pytest.mark.parametrize("scheduler,job_id,slurm_job_id", [("slurm", "42_0", "42_0"), ("local", "3141", None)])
def test_the_record_of_a_run_that_left_none(tmp_path, clock, host, scheduler, job_id, slurm_job_id):
    run_dir = tmp_path / "sw" / "0_tiny"
    results.write_submission(run_dir, **SUBMISSION, scheduler=scheduler, job_id=job_id)  # at T0
    path = results.write_record_from_submission(  # at T1
        run_dir, status="cancelled", error=f"job {job_id} ended CANCELLED without writing a record",
        details={"scheduler_state": "CANCELLED by 1000"})
    assert path == run_dir / "result.json"
    assert results.read_record(path) == {
        "schema_version": 1, "run_id": "sw/0_tiny", "sweep_id": "sw", "status": "cancelled",
        "error": f"job {job_id} ended CANCELLED without writing a record", "model": "tiny", "nodes": 2,
        "config": SUBMISSION["config"], "config_hash": results.config_hash(SUBMISSION["config"]),
        "metrics": {},  # it measured nothing
        "env": {"hostname": host, "job_id": job_id, "slurm_job_id": slurm_job_id,
                "written_by": "launcher: the run left no record", "scheduler_state": "CANCELLED by 1000"},
        "started_at": T0,  # submitted
        "finished_at": T1}  # found out


def test_a_node_failure_without_a_record_is_node_fail_whatever_a_rank_said(tmp_path, clock, host):
    run_dir = tmp_path / "sw" / "0_tiny"
    results.write_submission(run_dir, **SUBMISSION, scheduler="slurm", job_id="42_0")  # at T0
    # a surviving rank's error (its peer vanished with the node): not the run's status
    results.rank_error_file(run_dir, 1).write_text(json.dumps(
        {"status": "oom", "message": "CUDA out of memory", "time": 1.0}))
    path = results.write_node_failure(run_dir, "node node2 failed (NODE_FAIL)", {"failed_node": "node2"})
    record = results.read_record(path)
    assert (path, record["status"], record["error"]) == (
        run_dir / "result.json", "node_fail", "node node2 failed (NODE_FAIL)")
    assert record["env"] == {"hostname": host, "job_id": "42_0", "slurm_job_id": "42_0",
                             "written_by": "launcher: the run left no record", "failed_node": "node2"}
    assert (record["started_at"], record["finished_at"]) == (T0, T1)


def test_a_node_failure_after_rank_0s_record_keeps_its_error_metrics_and_env(tmp_path, clock):
    run_dir = tmp_path / "sw" / "0_tiny"
    own = results.make_record(run_id="sw/0_tiny", sweep_id="sw", status="killed",
                              error="rank 0: connection reset by peer", config={"model": {"name": "tiny"}},
                              axes={"model": "tiny"}, metrics={"tokens_per_s": 10.0},
                              env={"hostname": "node1", "slurm_job_id": "42_0"}, started_at="s", finished_at="f")
    results.write_record(run_dir, own)
    path = results.write_node_failure(run_dir, "node node2 failed (NODE_FAIL)", {"failed_node": "node2"})  # T0
    assert path == run_dir / "result.json"
    assert results.read_record(path) == {
        **own, "status": "node_fail", "error": "node node2 failed (NODE_FAIL)", "finished_at": T0,
        "env": {"hostname": "node1", "slurm_job_id": "42_0", "failed_node": "node2",
                "survivor_error": "rank 0: connection reset by peer"}}


def test_the_record_of_an_invalid_point(tmp_path, clock, host):
    config = {"model": {"name": "gpt_125m", "family": "gpt"}, "strategy": {"name": "zero3", "zero_stage": 3},
              "optimizer": {"name": "lamb"}, "precision": {"name": "fp16"},
              "cluster": {"nodes": 2, "env": {"HF_TOKEN": "hunter2"}},
              "train": {"micro_batch_size": 8, "global_batch_size": 100, "scaling": "weak", "repeat_index": 1}}
    run_dir = tmp_path / "2024-05-01_10-00-00" / "3_gpt_125m_zero3"
    path = results.write_invalid_record(run_dir, config, "train.global_batch_size=100 is not divisible by 16")
    assert path == run_dir / "result.json"
    safe = {**config, "cluster": {"nodes": 2, "env": {"HF_TOKEN": "<redacted>"}}}
    assert results.read_record(path) == {
        "schema_version": 1, "run_id": "2024-05-01_10-00-00/3_gpt_125m_zero3",
        "sweep_id": "2024-05-01_10-00-00", "status": "invalid",
        "error": "train.global_batch_size=100 is not divisible by 16",
        # the axes it has, picked from its config (it has no plan)
        "model": "gpt_125m", "model_family": "gpt", "strategy": "zero3", "zero_stage": 3,
        "optimizer": "lamb", "precision": "fp16", "nodes": 2, "micro_batch_size": 8,
        "global_batch_size": 100, "scaling": "weak", "repeat_index": 1,
        "config": safe, "config_hash": results.config_hash(safe), "metrics": {},
        "env": {"hostname": host, "written_by": "launcher: invalid point"},
        "started_at": T0, "finished_at": T0}  # it never ran: one moment


def test_an_invalid_point_missing_config_groups_has_those_axes_null(tmp_path, clock, host):
    path = results.write_invalid_record(tmp_path / "sw" / "0_x", {"model": {"name": "tiny"}, "optimizer": None},
                                        "bad")
    record = results.read_record(path)
    assert (record["model"], record["model_family"], record["optimizer"], record["nodes"]) == ("tiny", None, None, None)


def test_a_resumed_sweep_skips_only_the_configs_that_ran_ok(tmp_path):
    for run, status, config_hash in (("0_a", "ok", "h0"), ("1_b", "error", "h1"), ("2_c", "ok", "h2")):
        results.write_record(tmp_path / run, {"status": status, "config_hash": config_hash})
    (tmp_path / "3_d").mkdir()
    (tmp_path / "3_d" / "submission.json").write_text("{}")  # submitted, never recorded
    assert results.ok_config_hashes(tmp_path) == {"h0": tmp_path / "0_a", "h2": tmp_path / "2_c"}


# ---- reproduction ----

PLAN = {"nodes": 1, "ranks_per_node": 4, "ds_config": {"train_batch_size": 8, "zero_optimization": {"stage": 2}},
        "torch_config": {}}
HEADER = ("#!/usr/bin/env bash\n# Runs this one run again by hand, outside the sweep; the record goes to "
          "./rerun/result.json.\nset -euo pipefail\n")


def test_a_run_folder_keeps_its_deepspeed_config_and_an_executable_rerun_sh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = Path("sw") / "0_tiny"  # relative, and not there yet
    files = results.write_reproduction(run_dir, PLAN, "/usr/bin/python3", "/work/suite")
    absolute = tmp_path.resolve() / "sw" / "0_tiny"  # rerun.sh works from any directory
    assert files == {
        "deepspeed_config.json": '{\n  "train_batch_size": 8,\n  "zero_optimization": {\n    "stage": 2\n  }\n}\n',
        "rerun.sh": HEADER + "cd /work/suite && /usr/bin/python3 -m torch.distributed.run --standalone "
                             f"--nnodes 1 --nproc-per-node 4 -m suite.rerun {absolute}\n"}
    assert {p.name: p.read_text() for p in run_dir.iterdir()} == files  # no temporary file left
    assert mode(run_dir / "rerun.sh") == 0o755
    # a resumed run writes them again into its folder
    assert results.write_reproduction(run_dir, PLAN, "/usr/bin/python3", "/work/suite") == files


def test_a_pytorch_baseline_keeps_its_torch_config(tmp_path):
    plan = {**PLAN, "ds_config": {}, "torch_config": {"engine": "torch_ddp", "bucket_cap_mb": 25}}
    assert results.engine_config(plan) == ("torch_config.json", {"engine": "torch_ddp", "bucket_cap_mb": 25})
    assert results.engine_config(PLAN) == ("deepspeed_config.json", PLAN["ds_config"])
    results.write_reproduction(tmp_path, plan, "python", "/work")
    assert sorted(os.listdir(tmp_path)) == ["rerun.sh", "torch_config.json"]


def test_a_multi_node_rerun_runs_one_torchrun_per_node_through_srun():
    command = results.rerun_command(Path("/r/sw/0_tiny"), 2, 8, "python", "/work")
    # the rendezvous on the allocation's first host, port 29500
    assert command == ("cd /work && srun --nodes 2 --ntasks-per-node 1 bash -c 'python -m torch.distributed.run "
                       "--nnodes 2 --nproc-per-node 8 --rdzv-backend c10d "
                       "--rdzv-endpoint $(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1):29500 "
                       "-m suite.rerun /r/sw/0_tiny'")
    assert results.rerun_command(Path("/r/sw/0_tiny"), 1, 8, "python", "/work") == (
        "cd /work && python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 8 "
        "-m suite.rerun /r/sw/0_tiny")


def test_no_field_of_the_suites_own_schema_is_redacted_but_free_form_credentials_are():
    from dataclasses import asdict

    from suite.config import ModelConfig, SuiteConfig

    # model.experts_per_token and model.drop_tokens contain "token": their values are settings
    cfg = asdict(SuiteConfig(model=ModelConfig(n_experts=4, experts_per_token=2, moe_ffn_dim=128)))
    assert results.redact("config", cfg) == cfg
    env = {"HF_TOKEN": "hf_abc", "NCCL_IB_SECRET_KEY": "k", "MY_API_TOKEN": "t", "NCCL_DEBUG": "WARN"}
    assert results.redact("env", env) == {"HF_TOKEN": "<redacted>", "NCCL_IB_SECRET_KEY": "<redacted>",
                                          "MY_API_TOKEN": "<redacted>", "NCCL_DEBUG": "WARN"}
