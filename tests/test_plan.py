"""The DeepSpeed config and batch math each run gets, against expected values, and the
combinations refused before anything starts."""
import itertools

import pytest

from suite.config import ConfigError
from suite.plan import batch_sizes, plan_run, to_object

STRATEGIES = ["ddp", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]
OPTIMIZERS = ["sgd", "sgd_momentum", "adam", "adamw", "adagrad", "lamb"]
PRECISIONS = ["fp32", "bf16", "fp16"]
WARMUP_LR = {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-4,
                                            "warmup_num_steps": 2, "warmup_type": "linear"}}


def ds(compose_cfg, *overrides, gpus=0):
    return plan_run(compose_cfg(*overrides), local_gpus=gpus).ds_config


def test_ddp_adamw_fp32_on_the_cpu(compose_cfg):
    assert ds(compose_cfg, "strategy=ddp", "optimizer=adamw", "precision=fp32") == {
        "train_batch_size": 4, "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1, "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer would synchronise the device in every step
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
        "gradient_clipping": 1.0,  # DeepSpeed clips at 1.0 by default; the plan says so
        "zero_optimization": {"stage": 0},
        # torch's AdamW on the CPU: DeepSpeed's FusedAdam would compile a C++ op for nothing
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8,
                                                  "weight_decay": 0.1, "adam_w_mode": True,
                                                  "torch_adam": True}},
        "scheduler": WARMUP_LR,
    }


def test_zero2_sgd_momentum_bf16_allows_the_untested_optimizer(compose_cfg):
    assert ds(compose_cfg, "strategy=zero2", "optimizer=sgd_momentum", "precision=bf16",
              "optimizer.scheduler=none", "train.micro_batch_size=3",
              "train.grad_accum_steps=4") == {
        "train_batch_size": 24, "train_micro_batch_size_per_gpu": 3,
        "gradient_accumulation_steps": 4, "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2, "reduce_bucket_size": 500_000_000,
                              "allgather_bucket_size": 500_000_000, "overlap_comm": False,
                              "contiguous_gradients": True},
        "optimizer": {"type": "SGD", "params": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0}},
        "bf16": {"enabled": True},
        "zero_allow_untested_optimizer": True,
    }


def test_zero3_offload_adam_fp16_on_8_gpus_is_pinned_true_adam_and_needs_cpu_adam(compose_cfg):
    config = ds(compose_cfg, "strategy=zero3_offload", "optimizer=adam", "precision=fp16",
                "optimizer.scheduler=warmup_decay", "strategy.stage3_prefetch_bucket_size=1000",
                gpus=8)
    assert config["train_batch_size"] == 16
    assert config["zero_optimization"] == {
        "stage": 3, "reduce_bucket_size": 500_000_000, "overlap_comm": False,
        "contiguous_gradients": True, "stage3_prefetch_bucket_size": 1000,
        "stage3_param_persistence_threshold": 100_000,
        "stage3_max_live_parameters": 1_000_000_000, "stage3_max_reuse_distance": 1_000_000_000,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True}}
    # "Adam" alone would train AdamW in DeepSpeed: adam_w_mode must say false
    # offloaded Adam is DeepSpeed's CPU-Adam (a compiled op): torch_adam would bypass it
    assert config["optimizer"] == {"type": "Adam", "params": {
        "lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0, "adam_w_mode": False}}
    plan = plan_run(compose_cfg("strategy=zero3_offload", "optimizer=adam"), local_gpus=8)
    assert plan.compiled_ops == (("cpu_adam", "strategy=zero3_offload (ZeRO-Offload) with optimizer=adam"),)
    assert config["fp16"] == {"enabled": True, "loss_scale": 0.0, "initial_scale_power": 16}
    assert config["scheduler"] == {"type": "WarmupDecayLR", "params": {
        **WARMUP_LR["params"], "total_num_steps": 13}}  # 3 warm-up + 10 timed steps
    assert "zero_allow_untested_optimizer" not in config


def test_zero1_adagrad_and_lamb_on_gpus(compose_cfg):
    assert ds(compose_cfg, "strategy=zero1", "optimizer=adagrad")["optimizer"] == {
        "type": "Adagrad", "params": {"lr": 1e-2, "eps": 1e-8, "weight_decay": 0.0}}
    lamb = plan_run(compose_cfg("strategy=zero1", "optimizer=lamb"), local_gpus=2)
    assert lamb.ds_config["optimizer"] == {
        "type": "Lamb", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8,
                                   "weight_decay": 0.01}}
    # FusedLamb is not on DeepSpeed's ZeRO list: without this, ZeRO >= 1 refuses it
    assert lamb.ds_config["zero_allow_untested_optimizer"] is True
    assert lamb.compiled_ops == (("fused_lamb", "optimizer=lamb"),)


@pytest.mark.parametrize("implementation,accelerator,expected,ops", [
    # on GPUs torch's fused AdamW: one kernel per step and nothing to compile
    ("auto", "cuda", {"torch_adam": True, "fused": True}, ()),
    ("auto", "cpu", {"torch_adam": True}, ()),
    ("torch", "cuda", {"torch_adam": True}, ()),
    ("torch_fused", "cpu", {"torch_adam": True, "fused": True}, ()),
    # DeepSpeed's FusedAdam only when asked for: a CUDA op compiled on first use
    ("deepspeed", "cuda", {}, (("fused_adam", "optimizer.implementation=deepspeed"),)),
])
def test_adam_implementation(compose_cfg, implementation, accelerator, expected, ops):
    overrides = ["optimizer=adamw", f"optimizer.implementation={implementation}"]
    plan = plan_run(compose_cfg(*overrides, f"cluster.accelerator={accelerator}", "cluster.gpus_per_node=2"), 0)
    params = plan.ds_config["optimizer"]["params"]
    assert {k: params[k] for k in ("torch_adam", "fused") if k in params} == expected
    assert plan.compiled_ops == ops


def test_the_optimizer_deepspeed_builds_is_on_its_zero_list_or_allowed_explicitly(compose_cfg):
    """Checked against DeepSpeed's own list, not our belief about it."""
    import torch
    from deepspeed.ops.lamb import FusedLamb
    from deepspeed.runtime.zero.utils import ZERO_SUPPORTED_OPTIMIZERS

    built = {"sgd": torch.optim.SGD, "sgd_momentum": torch.optim.SGD, "adam": torch.optim.Adam,
             "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad, "lamb": FusedLamb}
    for name, cls in built.items():
        config = ds(compose_cfg, "strategy=zero2", f"optimizer={name}", gpus=2)
        allowed = config.get("zero_allow_untested_optimizer", False)
        assert (cls in ZERO_SUPPORTED_OPTIMIZERS) or allowed, name


@pytest.mark.parametrize("strategy,optimizer,precision",
                         list(itertools.product(STRATEGIES, OPTIMIZERS, PRECISIONS)))
def test_every_combination_on_gpus_has_consistent_blocks(compose_cfg, strategy, optimizer, precision):
    overrides = [f"strategy={strategy}", f"optimizer={optimizer}", f"precision={precision}"]
    offload = strategy.endswith("offload")
    if offload and optimizer not in ("adam", "adamw", "adagrad"):
        with pytest.raises(ConfigError, match=f"optimizer={optimizer} cannot run with strategy={strategy}"):
            plan_run(compose_cfg(*overrides), local_gpus=4)
        return
    plan = plan_run(compose_cfg(*overrides), local_gpus=4)
    config = plan.ds_config
    stage = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero2_offload": 2, "zero3_offload": 3}[strategy]
    assert plan.world_size == 4 and plan.accelerator == "cuda"
    assert config["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in config["zero_optimization"]) == offload
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] * \
        config["gradient_accumulation_steps"] * plan.data_parallel_size
    assert ("bf16" in config, "fp16" in config) == (precision == "bf16", precision == "fp16")
    assert config.get("zero_allow_untested_optimizer", False) == (
        stage > 0 and optimizer in ("sgd", "sgd_momentum", "lamb"))
    if optimizer in ("adam", "adamw"):  # torch's fused kernel on GPUs; CPU-Adam under offload
        assert config["optimizer"]["params"].get("fused") is (None if offload else True)
        assert plan.compiled_ops == ((("cpu_adam", f"strategy={strategy} (ZeRO-Offload) with "
                                       f"optimizer={optimizer}"),) if offload else ())


@pytest.mark.parametrize("overrides,message", [
    (["precision=fp16"], "precision=fp16 needs a GPU"),
    (["optimizer=lamb"], "optimizer=lamb needs a GPU"),
    (["strategy=zero2_offload", "optimizer=sgd"], "optimizer=sgd cannot run with strategy=zero2_offload"),
    (["train.global_batch_size=6", "train.grad_accum_steps=1"], "train.global_batch_size=6 must equal train.micro_batch_size=2 x "
                                    "train.grad_accum_steps=1 x data-parallel size 2 = 4"),
    (["cluster.accelerator=cuda"], "cluster.gpus_per_node must be set"),
    (["cluster.nodes=2"], "cluster.nodes=2 needs cluster.scheduler=slurm"),
])
def test_refused_on_the_cpu_before_anything_runs(compose_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        plan_run(compose_cfg(*overrides), local_gpus=0)
    assert message in str(err.value)


def test_world_size_comes_from_the_run_config(compose_cfg):
    assert plan_run(compose_cfg("cluster.cpu_ranks=1"), 0).world_size == 1
    plan = plan_run(compose_cfg("cluster.scheduler=slurm", "cluster.nodes=2", "cluster.gpus_per_node=8",
                                "cluster.accelerator=cuda"), 0)
    assert (plan.nodes, plan.ranks_per_node, plan.world_size) == (2, 8, 16)
    assert plan.ds_config["train_batch_size"] == 32


def test_batch_sizes():
    assert batch_sizes(4, 8, None, 16) == (4, 8, 512)
    assert batch_sizes(4, 8, 512, 16) == (4, 8, 512)
    with pytest.raises(ConfigError):
        batch_sizes(4, 8, 500, 16)


@pytest.mark.parametrize("overrides,message", [
    (["strategy=tp2", "cluster.cpu_ranks=3"],
     "world size 3 (cluster.nodes x ranks per node) is not divisible by strategy.tensor_parallel=2"),
    (["strategy=tp2", "model.n_heads=1", "model.d_model=64"],
     "model.n_heads=1 must be divisible by strategy.tensor_parallel=2"),
    (["strategy.pipeline_parallel=2", "model.n_layers=1"],
     "strategy.pipeline_parallel=2 exceeds model.n_layers=1"),
    (["strategy=pp2", "strategy.zero_stage=2"],
     "strategy.pipeline_parallel=2 cannot run with strategy.zero_stage=2"),
    (["strategy=tp2_pp2", "cluster.cpu_ranks=8"], "does not combine with its pipeline engine"),
    (["strategy=tp2", "strategy.zero_stage=2", "strategy.offload_optimizer=true"],
     "ZeRO-Offload (strategy.offload_optimizer/offload_params) is not offered"),
    (["strategy=zero3", "strategy.zero_quantized_weights=true"], "ZeRO++"),
    (["strategy=zero3", "strategy.mics_shard_size=2"], "MiCS was removed from DeepSpeed"),
    (["strategy=zero2", "strategy.zero_quantized_gradients=true", "cluster.accelerator=cuda",
      "cluster.gpus_per_node=2"], "need strategy.zero_stage=3, not 2"),
    (["strategy=pp2", "train.activation_checkpointing=cpu"],
     "train.activation_checkpointing=cpu is not wired into the pipeline model"),
    (["strategy=sp2_zero3", "cluster.cpu_ranks=3"],
     "is not divisible by strategy.tensor_parallel=1 x strategy.pipeline_parallel=1 x strategy.sequence_parallel=2"),
    (["strategy=sp2_zero3", "model.seq_len=63"],
     "model.n_heads=4 and model.seq_len=63 must be divisible by strategy.sequence_parallel=2"),
    (["strategy=sp2_zero3", "strategy.tensor_parallel=2", "cluster.cpu_ranks=4"],
     "strategy.sequence_parallel=2 with strategy.tensor_parallel=2"),
    (["strategy=pp2", "train.compile=true"], "train.compile=true with strategy.pipeline_parallel=2"),
    (["train.compile=true", "train.warmup_steps=0"], "train.compile=true needs train.warmup_steps >= 1"),
    (["strategy=tp2", "train.global_batch_size=3"],
     "train.global_batch_size=3 is not a multiple of train.micro_batch_size=2 x data-parallel size 1"),
])
def test_layouts_that_cannot_run_are_refused_naming_the_fields(compose_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        plan_run(compose_cfg(*overrides), local_gpus=0)
    assert message in str(err.value)


def test_tensor_and_pipeline_layouts_keep_the_global_batch(compose_cfg):
    tp = plan_run(compose_cfg("strategy=tp2", "train.global_batch_size=8"), 0)
    assert (tp.data_parallel_size, tp.tensor_parallel, tp.grad_accum_steps, tp.global_batch_size) == (1, 2, 4, 8)
    # DeepSpeed checks train_batch_size against the whole world before AutoTP splits it
    assert tp.ds_config["train_batch_size"] == 16
    assert tp.ds_config["tensor_parallel"]["autotp_size"] == 2
    assert [spec["partition_type"] for spec in tp.ds_config["tensor_parallel"]["partition_config"]["layer_specs"]] \
        == ["column", "column", "row"]
    pp = plan_run(compose_cfg("strategy=pp2", "train.global_batch_size=8", "cluster.cpu_ranks=4"), 0)
    assert (pp.data_parallel_size, pp.pipeline_parallel, pp.grad_accum_steps) == (2, 2, 2)
    assert pp.ds_config["train_batch_size"] == 8 and "tensor_parallel" not in pp.ds_config
    # Ulysses: the ranks of a sequence-parallel group share their samples; ZeRO shards over all
    sp = plan_run(compose_cfg("strategy=sp2_zero3", "train.global_batch_size=8", "cluster.cpu_ranks=4"), 0)
    assert (sp.data_parallel_size, sp.sequence_parallel, sp.grad_accum_steps, sp.sharding_size) == (2, 2, 2, 4)
    assert sp.ds_config["train_batch_size"] == 8
    dp = plan_run(compose_cfg("strategy=ddp", "train.global_batch_size=8"), 0)
    assert (dp.data_parallel_size, dp.grad_accum_steps) == (2, 2)


def test_activation_checkpointing_and_zero_plus_plus_blocks(compose_cfg):
    cpu = plan_run(compose_cfg("train.activation_checkpointing=cpu"), 0).ds_config
    assert cpu["activation_checkpointing"] == {"partition_activations": True, "cpu_checkpointing": True,
                                               "contiguous_memory_optimization": False,
                                               "synchronize_checkpoint_boundary": False}
    assert "activation_checkpointing" not in plan_run(compose_cfg("train.activation_checkpointing=full"), 0).ds_config
    zpp = plan_run(compose_cfg("strategy=zero3", "strategy.zero_quantized_weights=true",
                               "strategy.zero_quantized_gradients=true", "strategy.zero_hpz_partition_size=8",
                               "cluster.accelerator=cuda", "cluster.gpus_per_node=8"), 0).ds_config
    assert {k: zpp["zero_optimization"][k] for k in ("zero_quantized_weights", "zero_quantized_gradients",
                                                     "zero_hpz_partition_size")} == {
        "zero_quantized_weights": True, "zero_quantized_gradients": True, "zero_hpz_partition_size": 8}


def test_precision_auto_is_bf16_on_gpus_and_fp32_on_cpus(compose_cfg):
    from suite.results import config_hash, run_config

    gpu = plan_run(compose_cfg("precision=auto", "cluster.accelerator=cuda", "cluster.gpus_per_node=8"), 0)
    assert gpu.precision == "bf16" and gpu.ds_config["bf16"] == {"enabled": True}
    auto = compose_cfg("precision=auto")
    cpu = plan_run(auto, 0)
    assert cpu.precision == "fp32" and "bf16" not in cpu.ds_config and "fp16" not in cpu.ds_config
    # an `auto` run records the precision that ran: the same configuration as an explicit fp32
    explicit = compose_cfg("precision=fp32")
    assert run_config(to_object(auto), cpu)["precision"]["name"] == "fp32"
    assert config_hash(run_config(to_object(auto), cpu)) == config_hash(run_config(to_object(explicit), plan_run(explicit, 0)))
