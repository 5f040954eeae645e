"""A catalogue of bad sweeps, each refused through the real command line before anything
starts: the message names the field, no run folder appears, no Slurm job is submitted."""
import concurrent.futures
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_sweep
from test_slurm import jobs_submitted_from

SLURM = ["cluster=slurm_local"]
# a token file of 64 tokens: one short of a sample of the tiny model's seq_len 64 (+ 1 target)
SHORT_TOKENS = Path(tempfile.gettempdir()) / "suite-catalogue-64-tokens.bin"
np.arange(64, dtype=np.uint16).tofile(SHORT_TOKENS)
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
    # mixtures of experts: an EP degree that does not divide, what DeepSpeed-MoE does not support
    (["model=moe_tiny", "strategy=zero2", "strategy.expert_parallel=3"], "strategy.expert_parallel=3"),
    (["model=moe_tiny", "strategy=zero3", "strategy.expert_parallel=2"], "with strategy.zero_stage=3"),
    (["model=moe_tiny", "strategy=tp2", "strategy.expert_parallel=2"], "must divide the data-parallel size 1"),
    (["model=moe_tiny", "strategy=tp2", "strategy.expert_parallel=2", "cluster.gpus_per_node=4"],
     "with strategy.tensor_parallel=2"),
    (["strategy.expert_parallel=2"], "needs a mixture of experts"),
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
    # ... and in the dry run too, which asks sbatch --test-only as the submission would
    (["cluster.nodes=8", "submit.dry_run=true"], "Dry run: sbatch refused the job array"),
    # floats that are not finite numbers: NaN passes any `x > 0`, inf any lower bound
    (["optimizer.lr=nan"], "optimizer.lr=nan is not a finite number"),
    (["optimizer.weight_decay=inf"], "optimizer.weight_decay=inf is not a finite number"),
    (["optimizer.betas=[0.9,nan]"], "optimizer.betas[1]=nan is not a finite number"),
    (["precision.loss_scale=nan"], "precision.loss_scale=nan is not a finite number"),
    (["cluster.host_memory_gb=inf"], "cluster.host_memory_gb=inf is not a finite number"),
    (["train.step_timeout_s=nan"], "train.step_timeout_s=nan is not a finite number"),
    (["report.memory_ratio_bounds=[0.9,inf]"], "report.memory_ratio_bounds[1]=inf is not a finite number"),
    (["report.max_cv=-inf"], "report.max_cv=-inf is not a finite number"),
    # a token file too short for one sample, local or as an fsspec URL (its size: nothing read)
    (["data=tokens", f"data.path={SHORT_TOKENS}"], f"data.path={SHORT_TOKENS} holds 64 tokens"),
    (["data=tokens", f"data.path=file://{SHORT_TOKENS}", "model.seq_len=128"],
     f"data.path=file://{SHORT_TOKENS} holds 64 tokens"),
    # a filesystem that is installed but cannot load here (pyarrow's HDFS without a JVM)
    (["data=tokens", "data.path=hdfs://namenode:8020/tokens.bin"],
     "data.path=hdfs://namenode:8020/tokens.bin: the 'hdfs' filesystem could not be opened"),
    # what DeepSpeed's initialize would refuse: partitioned checkpointing without TP ranks
    (["strategy=sp2", "train.activation_checkpointing=partitioned"],
     "train.activation_checkpointing=partitioned with strategy.tensor_parallel=1"),
    (["train.activation_checkpointing=partitioned"],
     "train.activation_checkpointing=partitioned with strategy.tensor_parallel=1"),
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


def test_a_typed_secret_is_in_no_file_the_suite_writes_and_the_sweep_warns(tmp_path):
    """A credential typed as a config value is written <redacted> in every file of the suite's own
    (sweep.json's labels, submission.json, result.json, the report, the engine config, rerun.sh),
    and the sweep warns that Hydra's .hydra/ and submitit's .submitit/ keep what was typed."""
    secret = "s3cr3t-value-4242"
    done = run_sweep(tmp_path, "strategy=ddp", "optimizer=sgd", "train.warmup_steps=0", "train.timed_steps=1",
                     f"+cluster.env.NCCL_IB_SECRET_KEY={secret}")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "A credential typed on the command line (cluster.env.NCCL_IB_SECRET_KEY)" in out
    assert "${oc.env:NAME}" in out
    written = [p for p in tmp_path.rglob("*") if p.is_file()
               and not {".hydra", ".submitit"} & set(p.relative_to(tmp_path).parts)
               and p.name != "multirun.yaml"]  # Hydra's, beside .hydra/
    names = {p.name for p in written}
    assert {"sweep.json", "submission.json", "result.json", "rerun.sh"} <= names, names
    assert [p for p in written if secret.encode() in p.read_bytes()] == []
    sweep_file = next(p for p in written if p.name == "sweep.json")
    assert "NCCL_IB_SECRET_KEY=<redacted>" in sweep_file.read_text()
    # the dry run prints it redacted too, and a refusal's list of invalid points
    dry = run_sweep(tmp_path / "dry", "strategy=ddp", "optimizer=sgd", f"+cluster.env.NCCL_IB_SECRET_KEY={secret}",
                    "submit.dry_run=true")
    assert dry.returncode == 0 and "+cluster.env.NCCL_IB_SECRET_KEY=<redacted>" in dry.stdout, dry.stderr[-2000:]
    refused = run_sweep(tmp_path / "refused", "train.micro_batch_size=0,1", f"+cluster.env.NCCL_IB_SECRET_KEY={secret}")
    assert refused.returncode != 0 and "NCCL_IB_SECRET_KEY=<redacted>" in refused.stdout + refused.stderr
    assert secret not in dry.stdout + dry.stderr + refused.stdout + refused.stderr
