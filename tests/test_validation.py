"""A catalogue of bad sweeps, each refused through the real command line before anything
starts: the message names the field, no run folder appears, no Slurm job is submitted."""
import concurrent.futures

import pytest

from conftest import run_sweep
from test_slurm import jobs_submitted_from

SLURM = ["cluster=slurm_local"]
CATALOGUE = [  # (overrides, what the message must name)
    (["model.d_modle=3"], "d_modle"),
    (["+strategy.bucket=1"], "bucket"),
    (["strategy=zero9"], "zero9"),
    (["model.n_layers=many"], "model.n_layers"),
    (["strategy.zero_stage=5"], "strategy.zero_stage=5"),
    (["optimizer.name=rmsprop"], "optimizer.name='rmsprop'"),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0 must be > 0"),
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5"),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9]"),
    (["precision=fp16"], "precision=fp16 needs a GPU"),
    (["optimizer=lamb"], "optimizer=lamb needs a GPU"),
    (["strategy=zero2_offload", "optimizer=sgd"], "optimizer=sgd cannot run with strategy=zero2_offload"),
    (["train.global_batch_size=6", "train.grad_accum_steps=1"], "train.global_batch_size=6 must equal"),
    (["train.micro_batch_size=0"], "train.micro_batch_size=0 must be > 0"),
    (["strategy=tp2", "cluster.gpus_per_node=3"], "is not divisible by strategy.tensor_parallel=2"),
    (["strategy=tp2", "model.n_heads=1"], "model.n_heads=1 must be divisible by strategy.tensor_parallel=2"),
    (["strategy=pp2", "model.n_layers=1"], "strategy.pipeline_parallel=2 exceeds model.n_layers=1"),
    (["strategy=pp2", "strategy.zero_stage=3"], "strategy.pipeline_parallel=2 cannot run with strategy.zero_stage=3"),
    (["strategy=tp2", "strategy.pipeline_parallel=2", "cluster.gpus_per_node=8"], "strategy.pipeline_parallel=2 with strategy.tensor_parallel=2"),
    (["strategy=zero3", "strategy.zero_quantized_weights=true"], "strategy.zero_quantized_weights"),
    (["strategy=zero3", "strategy.mics_shard_size=2"], "strategy.mics_shard_size"),
    (["train.activation_checkpointing=sometimes"], "train.activation_checkpointing='sometimes'"),
    (["train.fault=segv"], "train.fault='segv'"),
    (["scaling=strong", "train.global_batch_size=null"], "train.scaling=strong"),
    (["cluster.gpus_per_node=4", "cluster.max_gpus_per_node=2"], "cluster.gpus_per_node=4 exceeds"),
    (["model=gpt_13b", "cluster.accelerator=cuda", "cluster.gpus_per_node=2", "cluster.gpu_memory_gb=80"],
     # 13.1e9 parameters x 16 bytes (bf16 AdamW) = 195.37 GiB of model states, + activations,
     # logits, buffers, +10% and the CUDA context (docs/memory.md)
     "needs 247.08 GiB per device by the memory model (model states 195.37 GiB"),
    (["cluster.timeout_min=0"], "cluster.timeout_min=0"),
    (["model.n_heads=5"], "model.d_model=64 must divide by model.n_heads=5"),
    (["submit.repeats=0"], "submit.repeats=0"),
    (["cluster.scheduler=pbs"], "cluster.scheduler='pbs'"),
    # the GPU path (a login node without GPUs must not decide what the compute nodes run)
    (["cluster.accelerator=auto"], "cluster.accelerator=auto with cluster.scheduler=slurm"),
    (["cluster.accelerator=cuda", "cluster.gpus_per_node=null"], "cluster.gpus_per_node must be set"),
    # model families: heads that cannot split, a head that cannot be tied under TP
    (["model=llama_tiny", "strategy=tp2", "model.n_kv_heads=1"],
     "model.n_heads=4 and model.n_kv_heads=1 must be divisible by strategy.tensor_parallel=2"),
    (["model=llama_tiny", "strategy=tp2", "model.tie_embeddings=true"], "model.tie_embeddings=true"),
    (["model.family=mamba"], "model.family='mamba' is not allowed"),
    # token files that are not there, or behind a scheme fsspec does not know
    (["data=tokens", "data.path=/nonexistent/tokens.bin"], "data.path=/nonexistent/tokens.bin: no such file"),
    (["data=tokens", "data.path=nosuch://bucket/tokens.bin"], "data.path=nosuch://bucket/tokens.bin: Protocol not known"),
    # micro-benchmarks take no sizes that measure nothing
    (["workload=gemm", "workload.gemm_sizes=[0]"], "workload.gemm_sizes[0]=0 must be >= 1"),
    (["workload=gemm", "workload.gemm_dtypes=[]"], "workload.gemm_dtypes is empty"),
    (["workload=allreduce", "workload.message_bytes=[2]"], "workload.message_bytes[0]=2 must be >= 4"),
    # the report's own settings (a window of no nights, a drop that is not a fraction)
    (["report.window=0"], "report.window=0 must be > 0"),
    (["report.min_drop=5"], "report.min_drop=5.0 must be a fraction in [0, 1)"),
    # what only Slurm can say (sbatch --test-only), before anything is submitted
    (["cluster.nodes=3"], "Node count specification invalid"),
    (["cluster.gpus_per_node=8"], "Requested node configuration is not available"),
]


def test_the_catalogue_refuses_a_bad_value_in_every_config_group():
    """Every group of the config schema (model, strategy, ..., report) has at least one bad
    value in the catalogue, so a group whose validation went missing is noticed."""
    from dataclasses import fields

    from suite.config import SuiteConfig

    covered = {o.lstrip("+").split("=")[0].split(".")[0] for overrides, _ in CATALOGUE for o in overrides}
    groups = {f.name for f in fields(SuiteConfig)}
    assert groups - covered == set()


@pytest.mark.usefixtures("slurm_cluster")
def test_every_bad_sweep_is_refused_before_submission(tmp_path):
    def attempt(case):
        index, (overrides, named) = case
        # every bad point sits in a sweep beside a good one: nothing of the sweep may start
        done = run_sweep(tmp_path / str(index), *SLURM, "optimizer.eps=1e-8,1e-7", *overrides)
        return overrides, named, done

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(attempt, enumerate(CATALOGUE)))
    for overrides, named, done in outcomes:
        assert done.returncode != 0, overrides
        assert named in done.stdout + done.stderr, (overrides, (done.stdout + done.stderr)[-1500:])
        assert "Traceback" not in done.stdout + done.stderr, (overrides, (done.stdout + done.stderr)[-1500:])
    assert not list(tmp_path.glob("*/*/*/submission.json")) and not list(tmp_path.glob("*/*/*/result.json"))
    # no job was submitted: judged by what these sweeps could have submitted, not by a diff of
    # all of sacct (earlier tests' jobs reach the accounting database late)
    assert jobs_submitted_from(tmp_path) == []


def test_refusal_lists_every_invalid_point(tmp_path):
    done = run_sweep(tmp_path, "train.micro_batch_size=0,1,-2", "strategy=ddp,zero1", "optimizer=adamw")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert out.count("must be > 0") == 4  # 0 and -2, for each strategy
    assert "nothing was started" in out and not list(tmp_path.glob("*/*/result.json"))
