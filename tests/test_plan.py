"""The DeepSpeed config and batch math each run gets, against expected values, and the
combinations refused before anything starts."""
import dataclasses
import itertools
import json

import pytest
from omegaconf import OmegaConf

from suite.config import (ClusterConfig, ConfigError, ModelConfig, OptimizerConfig, PrecisionConfig, StrategyConfig,
                          SubmitConfig, SuiteConfig, TrainConfig, WorkloadConfig)
from suite.memory import LocalMemory, model_presets, predict_memory
from suite.plan import (RunPlan, adam_implementation, available_memory, batch_sizes, check_combination,
                        check_engine, check_layout, check_site, compiled_ops, deepspeed_config, estimated_cost,
                        memory_line, memory_need, needs_local_gpus, plan_run, ranks_per_node, resolve_accelerator,
                        resolve_precision, to_object, what_would_fit)

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
        "stage": 3, "reduce_bucket_size": 500_000_000, "overlap_comm": True,  # DeepSpeed's own default for stage 3
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
    (["strategy=tp2", "strategy.pipeline_parallel=2", "cluster.cpu_ranks=8"], "does not combine with its pipeline engine"),
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


# --- the functions of the plan, one by one -------------------------------------------------------

GIB = 2 ** 30


def suite_cfg(strategy=None, train=None, cluster=None, model=None, optimizer=None, **kw):
    return SuiteConfig(strategy=strategy or StrategyConfig(), train=train or TrainConfig(),
                       cluster=cluster or ClusterConfig(accelerator="cpu"), model=model or ModelConfig(),
                       optimizer=optimizer or OptimizerConfig(), **kw)


def refusal(fn, *args):
    with pytest.raises(ConfigError) as err:
        fn(*args)
    return str(err.value)


# --- batch arithmetic -------------------------------------------------------------------------

def test_accumulation_defaults_to_one_and_is_derived_from_a_set_global_batch():
    assert batch_sizes(3, None, None, 4) == (3, 1, 12)        # 3 x 1 x 4
    assert batch_sizes(2, None, 12, 3) == (2, 2, 12)          # 12 / (2 x 3) = 2 steps
    assert batch_sizes(4, None, 8, 2) == (4, 1, 8)            # 8 / (4 x 2) = 1 step
    assert batch_sizes(1, 5, 10, 2) == (1, 5, 10)             # all three set and consistent


def test_a_global_batch_that_micro_x_dp_does_not_divide_is_refused_with_the_product():
    # 2 x 3 = 6 does not divide 7
    assert refusal(batch_sizes, 2, None, 7, 3) == (
        "train.global_batch_size=7 is not a multiple of train.micro_batch_size=2 x data-parallel size 3 = 6")
    # 4 x 2 = 8 does not divide 6 (though 4 / 2 = 2 would)
    assert refusal(batch_sizes, 4, None, 6, 2) == (
        "train.global_batch_size=6 is not a multiple of train.micro_batch_size=4 x data-parallel size 2 = 8")


def test_a_set_accumulation_that_contradicts_the_global_batch_is_refused_not_recomputed():
    # 4 x 2 x 16 = 128, not 512 (512 would be accumulation 8)
    assert refusal(batch_sizes, 4, 2, 512, 16) == (
        "train.global_batch_size=512 must equal train.micro_batch_size=4 x train.grad_accum_steps=2 x "
        "data-parallel size 16 = 128")


# --- accelerator, precision, ranks ------------------------------------------------------------

def test_precision_and_accelerator_auto_resolve_from_the_hardware():
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"       # explicit wins (check_combination refuses it)
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_accelerator("auto", 1) == "cuda"
    assert resolve_accelerator("auto", 0) == "cpu"
    assert resolve_accelerator("cpu", 8) == "cpu"
    assert resolve_accelerator("cuda", 0) == "cuda"


def test_the_launcher_counts_local_gpus_only_when_the_config_leaves_it_open():
    assert needs_local_gpus(suite_cfg(cluster=ClusterConfig(accelerator="auto")))
    assert needs_local_gpus(suite_cfg(cluster=ClusterConfig(accelerator="cuda")))
    assert not needs_local_gpus(suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=4)))
    assert not needs_local_gpus(suite_cfg(cluster=ClusterConfig(accelerator="cpu")))


def test_ranks_per_node_configured_else_local_gpus_else_cpu_ranks():
    declared = suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=4))
    assert ranks_per_node(declared, "cuda", 8) == 4
    open_ = suite_cfg(cluster=ClusterConfig(accelerator="cuda", cpu_ranks=3))
    assert ranks_per_node(open_, "cuda", 1) == 1
    assert ranks_per_node(open_, "cpu", 8) == 3             # GPUs seen, but a CPU run: cpu_ranks
    assert refusal(ranks_per_node, open_, "cuda", 0) == (
        "cluster.gpus_per_node must be set when the GPUs are not on this machine")


def test_the_sites_gpus_per_node_are_a_ceiling():
    site = suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=8, max_gpus_per_node=4))
    assert refusal(check_site, site, 8) == (
        "cluster.gpus_per_node=8 exceeds the 4 GPUs per node of this site (cluster.max_gpus_per_node)")
    check_site(site, 4)  # exactly the site's 4: fine
    assert refusal(plan_run, site) == (  # the plan makes the same check
        "cluster.gpus_per_node=8 exceeds the 4 GPUs per node of this site (cluster.max_gpus_per_node)")
    check_site(suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=8)), 8)  # not declared


# --- layouts and combinations refused, naming the fields ---------------------------------------

@pytest.mark.parametrize("strategy,train,world,message", [
    (dict(pipeline_parallel=2), {}, 3,
     "world size 3 (cluster.nodes x ranks per node) is not divisible by strategy.tensor_parallel=1 x "
     "strategy.pipeline_parallel=2 x strategy.sequence_parallel=1"),
    (dict(tensor_parallel=2, sequence_parallel=2), {}, 4,
     "strategy.sequence_parallel=2 with strategy.tensor_parallel=2 / strategy.pipeline_parallel=1: this "
     "suite runs DeepSpeed-Ulysses with data parallel and ZeRO only (DeepSpeed's Ulysses groups and its "
     "AutoTP and pipeline groups are separate mechanisms)"),
    (dict(pipeline_parallel=2, sequence_parallel=2), {}, 4,
     "strategy.sequence_parallel=2 with strategy.tensor_parallel=1 / strategy.pipeline_parallel=2: this "
     "suite runs DeepSpeed-Ulysses with data parallel and ZeRO only (DeepSpeed's Ulysses groups and its "
     "AutoTP and pipeline groups are separate mechanisms)"),
    (dict(pipeline_parallel=3), {}, 3,
     "strategy.pipeline_parallel=3 exceeds model.n_layers=2: every stage needs at least one block"),
    (dict(pipeline_parallel=2, zero_stage=3), {}, 2,
     "strategy.pipeline_parallel=2 cannot run with strategy.zero_stage=3: DeepSpeed's pipeline engine "
     "allows ZeRO stage 0 or 1 only"),
    (dict(pipeline_parallel=2, tensor_parallel=2), {}, 4,
     "strategy.pipeline_parallel=2 with strategy.tensor_parallel=2: DeepSpeed's AutoTP training does not "
     "combine with its pipeline engine"),
    (dict(pipeline_parallel=2, zero_stage=1, offload_optimizer=True), {}, 2,
     "ZeRO-Offload (strategy.offload_optimizer/offload_params) is not offered with "
     "strategy.pipeline_parallel or strategy.tensor_parallel > 1"),
    (dict(tensor_parallel=2, zero_stage=3, offload_params=True), {}, 2,
     "ZeRO-Offload (strategy.offload_optimizer/offload_params) is not offered with "
     "strategy.pipeline_parallel or strategy.tensor_parallel > 1"),
    (dict(zero_stage=2, zero_hpz_partition_size=2), {}, 2,
     "ZeRO++ (strategy.zero_quantized_weights, zero_quantized_gradients, zero_hpz_partition_size) need "
     "strategy.zero_stage=3, not 2"),
    (dict(zero_stage=1, zero_quantized_weights=True), {}, 2,
     "ZeRO++ (strategy.zero_quantized_weights, zero_quantized_gradients, zero_hpz_partition_size) need "
     "strategy.zero_stage=3, not 1"),
    (dict(pipeline_parallel=2), dict(compile=True), 2,
     "train.compile=true with strategy.pipeline_parallel=2: this suite compiles the whole module, and the "
     "pipeline engine runs it stage by stage"),
    (dict(pipeline_parallel=2), dict(activation_checkpointing="partitioned"), 2,
     "train.activation_checkpointing=partitioned is not wired into the pipeline model of this suite (yet); "
     "use full"),
    (dict(pipeline_parallel=2), dict(activation_checkpointing="cpu"), 2,
     "train.activation_checkpointing=cpu is not wired into the pipeline model of this suite (yet); use full"),
])
def test_each_impossible_layout_is_refused_with_the_whole_reason(strategy, train, world, message):
    cfg = suite_cfg(strategy=StrategyConfig(**strategy), train=TrainConfig(**train))
    assert refusal(check_layout, cfg, world) == message


@pytest.mark.parametrize("strategy,train,world", [
    (dict(pipeline_parallel=2), {}, 2),                      # as many stages as the 2 blocks
    (dict(pipeline_parallel=2, zero_stage=1), {}, 4),        # the pipeline engine takes ZeRO-1
    (dict(sequence_parallel=2, zero_stage=3), {}, 4),        # Ulysses with ZeRO-3
    (dict(tensor_parallel=2, zero_stage=2), {}, 2),          # AutoTP with ZeRO-2
    (dict(zero_stage=3, zero_hpz_partition_size=2, zero_quantized_weights=True,
          zero_quantized_gradients=True), {}, 2),            # ZeRO++ on ZeRO-3
    (dict(zero_stage=2, offload_optimizer=True), {}, 2),     # offload without TP or PP
    (dict(zero_stage=3, offload_optimizer=True, offload_params=True), {}, 2),
    ({}, dict(compile=True, activation_checkpointing="cpu"), 2),  # no pipeline: both allowed
    (dict(pipeline_parallel=2), dict(activation_checkpointing="full"), 2),
])
def test_layouts_that_can_be_built_pass(strategy, train, world):
    check_layout(suite_cfg(strategy=StrategyConfig(**strategy), train=TrainConfig(**train)), world)


def test_the_model_familys_own_layout_rules_see_every_parallel_degree():
    tied = ModelConfig(name="llama_tied", family="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                       ffn_dim=192, tie_embeddings=True)
    assert refusal(check_layout, suite_cfg(model=tied, strategy=StrategyConfig(pipeline_parallel=2)), 2) == (
        "model.tie_embeddings=true with strategy.tensor_parallel=1 / strategy.pipeline_parallel=2: the tied output "
        "head is offered with data parallel, ZeRO and sequence parallel only (set model.tie_embeddings=false)")
    check_layout(suite_cfg(model=tied, strategy=StrategyConfig(zero_stage=3, sequence_parallel=2)), 2)


def test_what_deepspeed_runs_only_on_gpus_is_refused_on_the_cpu_with_the_alternatives():
    zpp = ("ZeRO++ (strategy.zero_quantized_weights, zero_quantized_gradients, zero_hpz_partition_size) "
           "need a GPU: DeepSpeed implements them with CUDA kernels and NCCL groups")
    for fields in (dict(zero_quantized_weights=True), dict(zero_quantized_gradients=True),
                   dict(zero_hpz_partition_size=2)):
        cfg = suite_cfg(strategy=StrategyConfig(zero_stage=3, **fields))
        assert refusal(check_combination, cfg, "cpu", "fp32") == zpp
        check_combination(cfg, "cuda", "bf16")
    assert refusal(check_combination, suite_cfg(), "cpu", "fp16") == (
        "precision=fp16 needs a GPU (DeepSpeed: 'Type fp16 is not supported on your device'); on the CPU "
        "use fp32 or bf16")
    lamb = suite_cfg(optimizer=OptimizerConfig(name="lamb"))
    assert refusal(check_combination, lamb, "cpu", "fp32") == (
        "optimizer=lamb needs a GPU (DeepSpeed's Lamb is a CUDA kernel); on the CPU use sgd, sgd_momentum, "
        "adam, adamw or adagrad")
    check_combination(lamb, "cuda", "fp16")  # both fine on a GPU
    check_combination(suite_cfg(strategy=StrategyConfig(zero_stage=3, zero_hpz_partition_size=1)), "cpu", "bf16")


@pytest.mark.parametrize("offload", [dict(offload_optimizer=True), dict(offload_params=True)])
def test_zero_offload_takes_only_the_optimizers_deepspeed_runs_on_the_cpu(offload):
    strategy = StrategyConfig(name="z3off", zero_stage=3, **offload)
    for name in ("sgd", "sgd_momentum"):
        cfg = suite_cfg(strategy=strategy, optimizer=OptimizerConfig(name=name))
        assert refusal(check_combination, cfg, "cuda", "bf16") == (
            f"optimizer={name} cannot run with strategy=z3off (ZeRO-Offload runs only "
            "['adam', 'adamw', 'adagrad'] on the CPU)")
    for name in ("adam", "adamw", "adagrad"):
        check_combination(suite_cfg(strategy=strategy, optimizer=OptimizerConfig(name=name)), "cuda", "bf16")
    # lamb: the GPU-only refusal comes first on the CPU, the offload one on GPUs
    lamb = suite_cfg(strategy=strategy, optimizer=OptimizerConfig(name="lamb"))
    assert refusal(check_combination, lamb, "cuda", "bf16").startswith("optimizer=lamb cannot run with strategy=z3off")


def baseline(engine, **fields):
    return StrategyConfig(name=engine, engine=engine, zero_stage={"torch_ddp": 0, "fsdp2": 3}[engine], **fields)


@pytest.mark.parametrize("engine", ["torch_ddp", "fsdp2"])
def test_the_pytorch_baselines_refuse_deepspeeds_features_naming_the_fix(engine):
    what = f"strategy.engine={engine}"
    for name in ("tensor_parallel", "pipeline_parallel", "sequence_parallel"):
        cfg = suite_cfg(strategy=baseline(engine, **{name: 2}))
        assert refusal(check_engine, cfg, "fp32") == (
            f"strategy.{name}=2 with {what}: the PyTorch baselines are data parallel only; use "
            f"strategy.engine=deepspeed, or strategy.{name}=1")
    for fields in (dict(zero_quantized_weights=True), dict(zero_quantized_gradients=True),
                   dict(zero_hpz_partition_size=2)):
        assert refusal(check_engine, suite_cfg(strategy=baseline(engine, **fields)), "fp32") == (
            "ZeRO++ (strategy.zero_quantized_weights, zero_quantized_gradients, zero_hpz_partition_size) "
            f"with {what}: ZeRO++ is DeepSpeed's; leave them false / 1")
    for mode in ("partitioned", "cpu"):
        cfg = suite_cfg(strategy=baseline(engine), train=TrainConfig(activation_checkpointing=mode))
        assert refusal(check_engine, cfg, "fp32") == (
            f"train.activation_checkpointing={mode} with {what}: partitioned and cpu checkpointing are "
            "DeepSpeed's; use full (torch's checkpoint per block) or none")
    assert refusal(check_engine, suite_cfg(strategy=baseline(engine)), "fp16") == (
        f"precision=fp16 with {what}: fp16 would need torch's GradScaler, which the baselines do not wire; "
        "use bf16 or fp32")
    lamb = suite_cfg(strategy=baseline(engine), optimizer=OptimizerConfig(name="lamb"))
    assert refusal(check_engine, lamb, "fp32") == (
        f"optimizer=lamb with {what}: Lamb is DeepSpeed's kernel, torch has none; use one of "
        "['sgd', 'sgd_momentum', 'adam', 'adamw', 'adagrad']")
    fused = suite_cfg(strategy=baseline(engine), optimizer=OptimizerConfig(implementation="deepspeed"))
    assert refusal(check_engine, fused, "fp32") == (
        f"optimizer.implementation=deepspeed with {what}: DeepSpeed's FusedAdam is not part of a torch "
        "baseline; use auto, torch or torch_fused")
    compiled = suite_cfg(strategy=baseline(engine), train=TrainConfig(compile=True))
    assert refusal(check_engine, compiled, "fp32") == (
        f"train.compile=true with {what}: compilation is not wired for the PyTorch baselines yet; leave "
        "train.compile=false")
    comms = suite_cfg(strategy=baseline(engine), train=TrainConfig(profile_comms=True))
    assert refusal(check_engine, comms, "fp32") == (
        f"train.profile_comms=true with {what}: DeepSpeed's comms logger counts only DeepSpeed's "
        "collectives, not DDP's or FSDP2's, so it would record nothing true; leave "
        "train.profile_comms=false")
    # what a baseline does build passes
    check_engine(suite_cfg(strategy=baseline(engine), train=TrainConfig(activation_checkpointing="full"),
                           optimizer=OptimizerConfig(name="adagrad", implementation="torch_fused")), "bf16")


def test_deepspeed_runs_skip_the_baseline_checks():
    cfg = suite_cfg(strategy=StrategyConfig(tensor_parallel=2), optimizer=OptimizerConfig(name="lamb"),
                    train=TrainConfig(compile=True, profile_comms=True))
    check_engine(cfg, "fp16")


# --- the memory a run has, and a job's cost ------------------------------------------------------

def test_gpu_memory_declared_else_read_locally_else_unknown_with_the_reason():
    declared = suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2, gpu_memory_gb=40.5))
    h100 = LocalMemory(gpu_bytes=80 * GIB, gpu_name="H100")
    assert available_memory(declared, "cuda", h100)[:2] == (40.5 * GIB, "cluster.gpu_memory_gb=40.5")
    local = suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2))
    gpu, source = available_memory(local, "cuda", h100)[:2]
    assert (gpu, type(gpu), source) == (80 * GIB, float, "H100: the smallest GPU of this machine, read through NVML")
    assert available_memory(local, "cuda", LocalMemory(gpu_bytes=GIB))[1] == (
        "GPU: the smallest GPU of this machine, read through NVML")  # NVML gave no name
    unknown = "not checked: the GPUs' memory is not declared (cluster.gpu_memory_gb)"
    assert available_memory(local, "cuda", None)[:2] == (None, unknown)
    assert available_memory(local, "cuda", LocalMemory(gpu_bytes=0))[:2] == (None, unknown)
    slurm = suite_cfg(cluster=ClusterConfig(scheduler="slurm", accelerator="cuda", gpus_per_node=2))
    assert available_memory(slurm, "cuda", h100)[:2] == (  # a login node's GPUs say nothing
        None, unknown + "; a Slurm sweep cannot read the compute nodes'")
    assert available_memory(suite_cfg(), "cpu", h100)[:2] == (None, "no GPU")


def test_host_memory_declared_else_slurms_mem_else_memavailable_else_unknown():
    laptop = LocalMemory(host_total_bytes=24 * GIB, host_available_bytes=23 * GIB)
    declared = suite_cfg(cluster=ClusterConfig(accelerator="cpu", host_memory_gb=7.5, mem_gb=64))
    assert available_memory(declared, "cpu", laptop)[2:] == (7.5 * GIB, "cluster.host_memory_gb=7.5")
    slurm = ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=2, mem_gb=64)
    assert available_memory(suite_cfg(cluster=slurm), "cpu", laptop)[2:] == (
        64 * GIB, "cluster.mem_gb=64 (Slurm --mem per node)")
    one = ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=2, mem_gb=1)
    assert available_memory(suite_cfg(cluster=one), "cpu", laptop)[2:] == (
        GIB, "cluster.mem_gb=1 (Slurm --mem per node)")
    local = suite_cfg(cluster=ClusterConfig(accelerator="cpu", mem_gb=64))  # --mem is Slurm's only
    host, source = available_memory(local, "cpu", laptop)[2:]
    assert (host, type(host)) == (23 * GIB, float)
    assert source == "MemAvailable 23.00 GiB of this machine at planning, of MemTotal 24.00 GiB"
    assert available_memory(local, "cpu", LocalMemory(host_available_bytes=3 * GIB // 2))[3] == (
        "MemAvailable 1.50 GiB of this machine at planning")  # MemTotal not read
    assert available_memory(local, "cpu", None)[2:] == (None, "not checked: this machine's memory was not read")
    assert available_memory(local, "cpu", LocalMemory(host_available_bytes=0))[2] is None
    all_of_it = ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=2)  # mem_gb 0
    assert available_memory(suite_cfg(cluster=all_of_it), "cpu", laptop)[2:] == (
        None, "not checked: the nodes' host memory is not declared (cluster.host_memory_gb, or "
              "cluster.mem_gb for Slurm's --mem)")


def test_a_jobs_cost_is_its_flops_per_device_plus_a_start_up_cost():
    cfg = suite_cfg()
    plan = plan_run(cfg)
    # 6 x 169,728 parameters x 4 samples x 64 tokens x (3 + 10) steps / 2 ranks = 1,694,564,352
    assert estimated_cost(cfg, plan) == 1e9 + 1_694_564_352
    z3 = suite_cfg(strategy=StrategyConfig(zero_stage=3))
    assert estimated_cost(z3, plan_run(z3)) == 1e9 + 2 * 1_694_564_352  # ZeRO-3 counts double
    z2 = suite_cfg(strategy=StrategyConfig(zero_stage=2))
    assert estimated_cost(z2, plan_run(z2)) == 1e9 + 1_694_564_352


# --- memory: what the run needs, and the verdict ---------------------------------------------------

# the tiny GPT, ddp, fp32 AdamW, micro-batch 2 on the CPU (tests/test_host_memory.py, by hand):
# per device 5,305,344 bytes x 1.1 = 5,835,878.4 (0.01 GiB); per rank of host memory
# 5,305,344 x 1.1 + 0.5 GiB of runtime = 542,706,790.4 (0.51 GiB)
TINY_DEVICE = 5_305_344 * 1.1
TINY_HOST = 5_305_344 * 1.1 + 2 ** 29


def test_a_shipped_plan_comes_back_whole_with_its_ops_as_tuples():
    plan = plan_run(suite_cfg(strategy=StrategyConfig(name="zero3_offload", zero_stage=3, offload_optimizer=True,
                                                      offload_params=True),
                              optimizer=OptimizerConfig(name="adam"),
                              cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2)))
    shipped = json.loads(json.dumps(plan.to_dict()))  # submission.json: lists, not tuples
    assert shipped["compiled_ops"] == [["cpu_adam", "strategy=zero3_offload (ZeRO-Offload) with optimizer=adam"]]
    back = RunPlan.from_dict(shipped)
    assert back == plan and back.compiled_ops == (("cpu_adam", "strategy=zero3_offload (ZeRO-Offload) with "
                                                                "optimizer=adam"),)
    older = {k: v for k, v in shipped.items() if k != "compiled_ops"}  # a plan from before the ops
    assert RunPlan.from_dict(older).compiled_ops == ()


def test_the_dry_runs_memory_line_says_what_was_compared_and_the_verdict():
    both = ClusterConfig(accelerator="cpu", gpu_memory_gb=1, host_memory_gb=2)
    cfg = suite_cfg(cluster=both, train=TrainConfig(micro_batch_size=2))
    # a declared GPU size stands for a CPU rank's device memory, and its verdict is the line's
    assert memory_line(cfg, plan_run(cfg)) == (
        "memory per device: needs 0.01 GiB of 1.00 GiB (cluster.gpu_memory_gb=1): fits")
    host = suite_cfg(cluster=ClusterConfig(accelerator="cpu", host_memory_gb=2), train=TrainConfig(micro_batch_size=2))
    assert memory_line(host, plan_run(host)) == (  # 2 GiB for 2 ranks
        "host memory per rank: needs 0.51 GiB of 1.00 GiB (cluster.host_memory_gb=2, / 2 ranks per node): fits")
    small = suite_cfg(cluster=ClusterConfig(accelerator="cpu", host_memory_gb=1), train=TrainConfig(micro_batch_size=2))
    assert memory_line(small, plan_run(small, check_memory=False)) == (
        "host memory per rank: needs 0.51 GiB of 0.50 GiB (cluster.host_memory_gb=1, / 2 ranks per node): "
        "does NOT fit")
    gpu = suite_cfg(cluster=ClusterConfig(accelerator="cpu", gpu_memory_gb=0.005),
                    train=TrainConfig(micro_batch_size=2))
    assert memory_line(gpu, plan_run(gpu, check_memory=False)) == (  # 5,368,709 bytes < 5,835,878
        "memory per device: needs 0.01 GiB of 0.01 GiB (cluster.gpu_memory_gb=0.005): does NOT fit")
    unknown = suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2))
    assert memory_line(unknown, plan_run(unknown)) == (
        "memory per device: not checked: the GPUs' memory is not declared (cluster.gpu_memory_gb)")


def test_the_verdict_is_the_first_check_that_fails_else_the_device_ones_figures():
    cfg = suite_cfg(cluster=ClusterConfig(accelerator="cpu", gpu_memory_gb=1, host_memory_gb=2),
                    train=TrainConfig(micro_batch_size=2))
    need = memory_need(cfg, plan_run(cfg))
    assert (need.required_bytes, need.available_bytes, need.problem, need.kind, need.source) == (
        pytest.approx(TINY_DEVICE), GIB, None, "device", "cluster.gpu_memory_gb=1")
    # the device fits, each rank's 0.5 GiB of host memory does not
    cfg = suite_cfg(cluster=ClusterConfig(accelerator="cpu", gpu_memory_gb=1, host_memory_gb=1),
                    train=TrainConfig(micro_batch_size=2))
    need = memory_need(cfg, plan_run(cfg, check_memory=False))
    assert (need.required_bytes, need.available_bytes, need.kind, need.source) == (
        pytest.approx(TINY_HOST), GIB / 2, "host", "cluster.host_memory_gb=1, / 2 ranks per node")
    assert need.problem.startswith("model=tiny (169,728 parameters) with strategy=ddp (")
    # the device does not fit: that verdict comes first
    cfg = suite_cfg(cluster=ClusterConfig(accelerator="cpu", gpu_memory_gb=0.005, host_memory_gb=1),
                    train=TrainConfig(micro_batch_size=2))
    need = memory_need(cfg, plan_run(cfg, check_memory=False))
    assert (need.kind, need.available_bytes, need.source) == ("device", 0.005 * GIB, "cluster.gpu_memory_gb=0.005")
    assert need.required_bytes == pytest.approx(TINY_DEVICE) and "per device by the memory model" in need.problem


def test_exactly_the_memory_needed_fits():
    exact = suite_cfg(cluster=ClusterConfig(accelerator="cpu", gpu_memory_gb=TINY_DEVICE / GIB),
                      train=TrainConfig(micro_batch_size=2))
    need = memory_need(exact, plan_run(exact))
    assert need.problem is None and need.available_bytes == need.required_bytes


def test_without_figures_to_compare_the_verdict_says_why_and_keeps_the_device_estimate():
    cpu = suite_cfg(train=TrainConfig(micro_batch_size=2))  # no LocalMemory read
    need = memory_need(cpu, plan_run(cpu))
    assert (need.required_bytes, need.available_bytes, need.problem, need.kind, need.source) == (
        pytest.approx(TINY_DEVICE), None, None, "host", "not checked: this machine's memory was not read")
    gpus = suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2), train=TrainConfig(micro_batch_size=2))
    need = memory_need(gpus, plan_run(gpus))
    assert (need.available_bytes, need.problem, need.kind, need.source) == (
        None, None, "device", "not checked: the GPUs' memory is not declared (cluster.gpu_memory_gb)")
    assert need.required_bytes > 2 ** 30  # the CUDA context counts on GPUs
    old = dataclasses.replace(plan_run(cpu), host_memory_source="")  # a plan from before the sources
    assert memory_need(cpu, old).source == "not checked"


def layout(cfg):
    """What a refusal says of the run's layout: the text up to the bytes it needs."""
    need = memory_need(cfg, plan_run(cfg, check_memory=False))
    return need.problem.split(" needs ")[0]


def test_a_refusal_names_the_model_and_the_layout_it_was_checked_for():
    tiny = "model=tiny (169,728 parameters) with strategy="
    small = dict(accelerator="cpu", gpu_memory_gb=0.001)  # nothing fits in 1 MiB per device
    assert layout(suite_cfg(cluster=ClusterConfig(**small))) == (
        tiny + "ddp (ZeRO-0, 1 node x 2 ranks, replicated on 2 data-parallel ranks, fp32, adamw, micro-batch 2, recompute none)")
    gpus = dict(scheduler="slurm", accelerator="cuda", gpus_per_node=4, nodes=2, gpu_memory_gb=0.001)
    offload = StrategyConfig(name="zero3_offload", zero_stage=3, offload_optimizer=True, offload_params=True)
    assert layout(suite_cfg(strategy=offload, cluster=ClusterConfig(**gpus), optimizer=OptimizerConfig(name="adam"),
                            train=TrainConfig(micro_batch_size=1, activation_checkpointing="full"),
                            precision=PrecisionConfig(name="bf16"))) == (
        tiny + "zero3_offload (ZeRO-3 offload optimizer+params, 2 nodes x 4 ranks, sharding over 8 ranks, bf16, "
               "adam, micro-batch 1, recompute full)")
    assert layout(suite_cfg(strategy=StrategyConfig(name="z2o", zero_stage=2, offload_optimizer=True),
                            cluster=ClusterConfig(**small))).startswith(
        tiny + "z2o (ZeRO-2 offload optimizer, 1 node x 2 ranks, sharding over 2 ranks,")
    assert layout(suite_cfg(strategy=StrategyConfig(name="tp2", zero_stage=1, tensor_parallel=2),
                            cluster=ClusterConfig(cpu_ranks=4, **small))).startswith(
        tiny + "tp2 (ZeRO-1, 1 node x 4 ranks, tensor parallel 2, sharding over 2 ranks,")
    assert layout(suite_cfg(strategy=StrategyConfig(name="pp2", pipeline_parallel=2),
                            cluster=ClusterConfig(cpu_ranks=4, **small))).startswith(
        tiny + "pp2 (ZeRO-0, 1 node x 4 ranks, pipeline parallel 2, replicated on 2 data-parallel ranks,")
    # Ulysses: a replica's sequence-parallel ranks share its weights, so ZeRO shards over all 4
    assert layout(suite_cfg(strategy=StrategyConfig(name="sp2", zero_stage=3, sequence_parallel=2),
                            cluster=ClusterConfig(cpu_ranks=4, **small))).startswith(
        tiny + "sp2 (ZeRO-3, 1 node x 4 ranks, sequence parallel 2, sharding over 4 ranks,")
    assert layout(suite_cfg(strategy=StrategyConfig(name="torch_ddp", engine="torch_ddp"),
                            cluster=ClusterConfig(**small))).startswith(
        tiny + "torch_ddp (torch DDP, 1 node x 2 ranks,")
    assert layout(suite_cfg(strategy=StrategyConfig(name="fsdp2", engine="fsdp2", zero_stage=3),
                            cluster=ClusterConfig(**small))).startswith(tiny + "fsdp2 (FSDP2, 1 node x 2 ranks,")


GPT_13B = ModelConfig(name="gpt_13b", n_layers=40, d_model=5120, n_heads=40, seq_len=2048, vocab_size=50304)


def test_a_host_memory_refusal_gives_every_term_where_it_has_its_memory_and_what_would_fit():
    laptop = LocalMemory(host_total_bytes=24 * GIB, host_available_bytes=23 * GIB)
    cfg = suite_cfg(model=GPT_13B, cluster=ClusterConfig(accelerator="cpu"), train=TrainConfig(micro_batch_size=2))
    # by hand (tests/test_host_memory.py): states 13,111,183,360 x 16 = 195.37 GiB, activations
    # 53,715,927,040 = 50.03 GiB, logits 2,640,379,904 = 2.46 GiB, buffers 2e9 = 1.86 GiB;
    # x 1.1 + 0.5 GiB = 275.19 GiB, against 23 GiB / 2 ranks = 11.50 GiB
    assert refusal(plan_run, cfg, 0, True, laptop) == (
        "model=gpt_13b (13,111,183,360 parameters) with strategy=ddp (ZeRO-0, 1 node x 2 ranks, replicated on "
        "2 data-parallel ranks, fp32, adamw, micro-batch 2, recompute none) needs 275.19 GiB of host memory per rank by the "
        "memory model (model states 195.37 GiB, activations 50.03 GiB, logits and loss 2.46 GiB, buffers "
        "1.86 GiB, +10% allocator allowance, + 0.50 GiB for the rank's runtime (Python, torch, DeepSpeed); "
        "docs/memory.md), more than the 11.50 GiB each rank has (MemAvailable 23.00 GiB of this machine at "
        "planning, of MemTotal 24.00 GiB, / 2 ranks per node). Would fit, by the same model: model=gpt_125m "
        "(163,895,808 parameters, 8.90 GiB); or submit.try_anyway=true runs it anyway")


def test_the_fp32_weights_built_whole_are_named_when_they_are_the_peak():
    wide = ModelConfig(name="wide", n_layers=8, d_model=1024, n_heads=8, seq_len=8, vocab_size=512)
    cfg = suite_cfg(model=wide, strategy=StrategyConfig(name="tp8", zero_stage=0, tensor_parallel=8),
                    cluster=ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=8, host_memory_gb=6),
                    train=TrainConfig(micro_batch_size=1))
    # 101,828,608 parameters x 4 bytes = 0.38 GiB built whole on every rank (AutoTP splits it
    # inside deepspeed.initialize), more than the 8-way split's training peak; x 1.1 + 0.5 GiB
    # = 0.92 GiB, against 6 GiB / 8 ranks = 0.75 GiB
    text = refusal(plan_run, cfg)
    assert ("+10% allocator allowance; the fp32 weights built before the engine shards them, 0.38 GiB, are the "
            "peak, + 0.50 GiB for the rank's runtime (Python, torch, DeepSpeed); docs/memory.md), more than the "
            "0.75 GiB each rank has (cluster.host_memory_gb=6, / 8 ranks per node)") in text
    assert "needs 0.92 GiB of host memory per rank" in text


def test_a_gpu_refusal_counts_the_cuda_context_and_suggests_offload():
    cfg = suite_cfg(model=GPT_13B, cluster=ClusterConfig(scheduler="slurm", accelerator="cuda", gpus_per_node=8,
                                                         gpu_memory_gb=80),
                    train=TrainConfig(micro_batch_size=4), precision=PrecisionConfig(name="bf16"))
    assert refusal(plan_run, cfg) == (
        "model=gpt_13b (13,111,183,360 parameters) with strategy=ddp (ZeRO-0, 1 node x 8 ranks, replicated on "
        "8 data-parallel ranks, bf16, adamw, micro-batch 4, recompute none) needs 277.23 GiB per device by the memory model "
        "(model states 195.37 GiB, activations 50.05 GiB, logits and loss 4.76 GiB, buffers 0.93 GiB, +10% "
        "allocator allowance + the CUDA context; docs/memory.md), more than cluster.gpu_memory_gb=80. Would "
        "fit, by the same model: strategy.zero_stage=3 strategy.offload_optimizer=true "
        "strategy.offload_params=true (67.73 GiB); model=gpt_2_7b (2,780,451,840 parameters, 74.79 GiB); or "
        "submit.try_anyway=true runs it anyway")


def test_when_nothing_fits_the_refusal_says_what_was_tried():
    # the CUDA context alone (1 GiB) is more than half a GiB
    local = suite_cfg(cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2))
    text = refusal(plan_run, local, 0, True, LocalMemory(gpu_bytes=GIB // 2, gpu_name="T4"))
    assert text.endswith(
        "needs 1.01 GiB per device by the memory model (model states 0.00 GiB, activations 0.00 GiB, logits and "
        "loss 0.00 GiB, buffers 0.00 GiB, +10% allocator allowance + the CUDA context; docs/memory.md), more than "
        "the 0.50 GiB per device (T4: the smallest GPU of this machine, read through NVML). Would fit, by the "
        "same model: nothing this check tries fits (a smaller preset, more nodes, a higher ZeRO stage, offload, "
        "micro-batch 1, recompute full); or submit.try_anyway=true runs it anyway")
    # on the CPU: no CUDA context, and offload is not tried
    cpu = suite_cfg(cluster=ClusterConfig(accelerator="cpu", gpu_memory_gb=0.001))
    assert refusal(plan_run, cpu).endswith(
        "needs 0.01 GiB per device by the memory model (model states 0.00 GiB, activations 0.00 GiB, logits and "
        "loss 0.00 GiB, buffers 0.00 GiB, +10% allocator allowance; docs/memory.md), more than "
        "cluster.gpu_memory_gb=0.001. Would fit, by the same model: nothing this check tries fits (a smaller "
        "preset, more nodes, a higher ZeRO stage, micro-batch 1, recompute full); or submit.try_anyway=true runs "
        "it anyway")


def test_only_training_runs_are_checked_and_try_anyway_skips_the_check():
    small = ClusterConfig(accelerator="cpu", gpu_memory_gb=0.001)
    plan_run(suite_cfg(cluster=small, submit=SubmitConfig(try_anyway=True)))
    plan_run(suite_cfg(cluster=small), check_memory=False)
    plan_run(suite_cfg(cluster=small, workload=WorkloadConfig(name="gemm")))
    with pytest.raises(ConfigError):
        plan_run(suite_cfg(cluster=small))


# --- what would fit instead: one change at a time, by the same memory model --------------------

MIB = 2 ** 20
# 101,828,608 parameters: model states (16 bytes each in fp32 AdamW) dominate at micro-batch 1
WIDE = ModelConfig(name="wide", n_layers=8, d_model=1024, n_heads=8, seq_len=8, vocab_size=512)
TINY_PRESET = "model=tiny (169,728 parameters, {} GiB)"  # the one gpt preset smaller than WIDE


def would_fit(cfg, available, kind="device"):
    return what_would_fit(cfg, plan_run(cfg, check_memory=False), kind, available)


def wide_on(accelerator, scheduler="slurm", optimizer="adamw", **strategy):
    """WIDE on 2 ranks per node, micro-batch 1, fp32, with small ZeRO buckets so the states decide."""
    cluster = (ClusterConfig(scheduler="slurm", accelerator=accelerator, gpus_per_node=2) if scheduler == "slurm"
               else ClusterConfig(accelerator=accelerator, cpu_ranks=2))
    return suite_cfg(model=WIDE, cluster=cluster, optimizer=OptimizerConfig(name=optimizer),
                     strategy=StrategyConfig(**{"reduce_bucket_size": 1_000_000,
                                                "stage3_max_live_parameters": 1_000_000, **strategy}),
                     train=TrainConfig(micro_batch_size=1), precision=PrecisionConfig(name="fp32"))


def test_the_lowest_zero_stage_that_fits_is_suggested():
    # per device on the CPU: ZeRO-1 4 + 4 + 8/2 bytes per parameter (1.26 GiB with the rest),
    # ZeRO-2 4 + 12/2 (1.05 GiB)
    assert would_fit(wide_on("cpu"), 1.3 * GIB) == ["strategy.zero_stage=1 (1.26 GiB)", TINY_PRESET.format("0.00")]
    assert would_fit(wide_on("cpu"), 1.1 * GIB) == ["strategy.zero_stage=2 (1.05 GiB)", TINY_PRESET.format("0.00")]


def test_the_fewest_nodes_that_fit_are_suggested_in_the_schedulers_terms():
    # ZeRO-1 shards the 8 bytes of optimizer state per parameter over 2 ranks per node: 2 nodes
    # need 1.05 GiB, 3 nodes 0.98 GiB: 3 is the fewest within 1 GiB (ZeRO-2 needs 1.05 GiB, and
    # ZeRO-3 gathering up to 1e9 parameters 1.26 GiB)
    gathered = dict(zero_stage=1, stage3_max_live_parameters=1_000_000_000)
    assert would_fit(wide_on("cpu", **gathered), 1.0 * GIB) == [
        "cluster.nodes=3 (0.98 GiB per rank)", TINY_PRESET.format("0.01")]
    assert would_fit(wide_on("cpu", "local", **gathered), 1.0 * GIB) == [
        "3 nodes like this machine (a Slurm cluster, cluster.nodes=3) (0.98 GiB per rank)",
        TINY_PRESET.format("0.01")]


def test_more_nodes_grow_the_data_parallel_degree_not_the_model_parallel_one():
    # Ulysses over 2 ranks: N nodes are N data-parallel replicas, ZeRO-3 shards over 2 N ranks
    assert would_fit(wide_on("cpu", zero_stage=3, sequence_parallel=2), 0.5 * GIB) == [
        "cluster.nodes=2 (0.43 GiB per rank)", TINY_PRESET.format("0.01")]
    # two pipeline stages: N nodes are N replicas of the pipeline, ZeRO-1 shards each stage's
    # optimizer states over N
    assert would_fit(wide_on("cpu", zero_stage=1, pipeline_parallel=2), 0.6 * GIB) == [
        "cluster.nodes=3 (0.56 GiB per rank)", TINY_PRESET.format("0.01")]
    assert would_fit(wide_on("cpu", zero_stage=1, pipeline_parallel=2), 0.5 * GIB) == [
        "cluster.nodes=6 (0.49 GiB per rank)", TINY_PRESET.format("0.01")]


def test_only_node_counts_the_layout_divides_are_searched_for_the_fewest():
    # Ulysses over 2 ranks with 1 rank per node: only even node counts can hold the layout.
    # ZeRO-3 shards over every rank: 4 nodes need 0.43 GiB, as 2 nodes of 2 ranks above. The
    # search once counted the odd counts as "does not fit", and the bisection then landed on 514.
    cfg = suite_cfg(model=WIDE, cluster=ClusterConfig(scheduler="slurm", accelerator="cpu", cpu_ranks=1, nodes=2),
                    optimizer=OptimizerConfig(name="adamw"), train=TrainConfig(micro_batch_size=1),
                    strategy=StrategyConfig(zero_stage=3, sequence_parallel=2, reduce_bucket_size=1_000_000,
                                            stage3_max_live_parameters=1_000_000),
                    precision=PrecisionConfig(name="fp32"))
    assert would_fit(cfg, 0.5 * GIB) == ["cluster.nodes=4 (0.43 GiB per rank)", TINY_PRESET.format("0.01")]
    # on exactly as many nodes as the suggestion names (even counts only), and on the most it
    # looks at: 1024 nodes of 1 rank, 512 Ulysses pairs
    plan = plan_run(cfg, check_memory=False)
    for nodes in (6, 1024):
        on = dataclasses.replace(plan, nodes=nodes, world_size=nodes, data_parallel_size=nodes // 2)
        needed = predict_memory(cfg, on)["required_bytes"]
        assert what_would_fit(cfg, plan, "device", needed)[0].startswith(f"cluster.nodes={nodes} (")


def test_a_model_parallel_degree_that_is_no_power_of_two_skips_the_node_counts_it_cannot_fill():
    # 3 pipeline stages on 2 ranks per node: only multiples of 3 nodes hold whole pipelines. 5
    # nodes (10 ranks) would hold 3 pipelines with a rank left over; the suggestion is 6 nodes,
    # although 3 pipelines' worth of ZeRO-1 sharding is what fits
    cfg = suite_cfg(model=WIDE, cluster=ClusterConfig(scheduler="slurm", accelerator="cpu", cpu_ranks=2, nodes=3),
                    optimizer=OptimizerConfig(name="adamw"), train=TrainConfig(micro_batch_size=1),
                    strategy=StrategyConfig(zero_stage=1, pipeline_parallel=3, reduce_bucket_size=1_000_000),
                    precision=PrecisionConfig(name="fp32"))
    plan = plan_run(cfg, check_memory=False)
    assert (plan.nodes, plan.world_size, plan.data_parallel_size) == (3, 6, 2)
    three_pipelines = dataclasses.replace(plan, nodes=5, world_size=10, data_parallel_size=3)
    available = predict_memory(cfg, three_pipelines)["required_bytes"]
    assert predict_memory(cfg, plan)["required_bytes"] > available
    assert what_would_fit(cfg, plan, "device", available)[0].startswith("cluster.nodes=6 (")


def test_on_gpus_offload_is_tried_from_the_least_to_the_most_offloaded():
    # ZeRO-1 + offload 1.84 GiB, ZeRO-2 + offload 1.63 GiB, ZeRO-3 + offload of both 1.22 GiB;
    # the first that fits is the suggestion
    assert would_fit(wide_on("cuda"), 2.0 * GIB) == [
        "strategy.zero_stage=3 (1.85 GiB)", "strategy.zero_stage=1 strategy.offload_optimizer=true (1.84 GiB)",
        TINY_PRESET.format("1.00")]
    assert would_fit(wide_on("cuda"), 1.7 * GIB) == [
        "strategy.zero_stage=2 strategy.offload_optimizer=true (1.63 GiB)", TINY_PRESET.format("1.00")]
    assert would_fit(wide_on("cuda"), 1.3 * GIB) == [
        "strategy.zero_stage=3 strategy.offload_optimizer=true strategy.offload_params=true (1.22 GiB)",
        TINY_PRESET.format("1.00")]
    # from ZeRO-2 with offload: ZeRO-3, then offloading the parameters too
    assert would_fit(wide_on("cuda", zero_stage=2, offload_optimizer=True), 1.5 * GIB) == [
        "strategy.zero_stage=3 (1.43 GiB)",
        "strategy.zero_stage=3 strategy.offload_optimizer=true strategy.offload_params=true (1.22 GiB)",
        "cluster.nodes=3 (1.50 GiB per rank)", TINY_PRESET.format("1.01")]
    # SGD has no CPU implementation in DeepSpeed: no offload suggested
    assert would_fit(wide_on("cuda", optimizer="sgd"), 1.7 * GIB) == [
        "strategy.zero_stage=2 (1.63 GiB)", TINY_PRESET.format("1.00")]


def test_torch_ddp_is_pointed_to_fsdp2():
    torch_ddp = dict(name="torch_ddp", engine="torch_ddp")
    assert would_fit(wide_on("cpu", **torch_ddp), 1.0 * GIB) == [
        "strategy=fsdp2 (0.94 GiB)", TINY_PRESET.format("0.00")]


def tiny_on_slurm(**strategy):
    """The tiny GPT (no smaller preset) on 2 CPU ranks per node, micro-batch 1, recomputing."""
    return suite_cfg(strategy=StrategyConfig(**strategy),
                     cluster=ClusterConfig(scheduler="slurm", accelerator="cpu", gpus_per_node=2),
                     train=TrainConfig(micro_batch_size=1, activation_checkpointing="full"))


def test_when_no_single_change_fits_the_most_sharded_layout_on_more_nodes_is_suggested():
    # torch DDP of the tiny GPT needs 3.61 MiB per device; FSDP2 on one node ~2.9 MiB, and less
    # on more nodes (16 bytes per parameter / 2 N ranks): 3 nodes within 2 MiB
    torch_ddp = tiny_on_slurm(name="torch_ddp", engine="torch_ddp")
    assert would_fit(torch_ddp, 3 * MIB) == ["strategy=fsdp2 (0.00 GiB)"]
    assert would_fit(torch_ddp, 2 * MIB) == ["strategy=fsdp2 on cluster.nodes=3 (0.00 GiB per rank)"]
    assert would_fit(torch_ddp, 1 * MIB) == []  # activations and logits alone are more
    ddp = tiny_on_slurm(reduce_bucket_size=1000, stage3_max_live_parameters=1000)
    assert would_fit(ddp, 3 * MIB) == ["strategy.zero_stage=1 (0.00 GiB)"]
    assert would_fit(ddp, 2.5 * MIB) == ["strategy.zero_stage=3 (0.00 GiB)"]
    assert would_fit(ddp, 1 * MIB) == ["strategy.zero_stage=3 on cluster.nodes=7 (0.00 GiB per rank)"]
    zero3 = tiny_on_slurm(zero_stage=3, reduce_bucket_size=1000, stage3_max_live_parameters=1000)
    assert would_fit(zero3, 1 * MIB) == ["cluster.nodes=7 (0.00 GiB per rank)"]
    assert would_fit(zero3, 0.5 * MIB) == []  # already the most sharded: nothing to add


def gpt_125m_on_the_cpu(pipeline_parallel=1, **train):
    return suite_cfg(model=model_presets()["gpt_125m"],
                     strategy=StrategyConfig(name="x", pipeline_parallel=pipeline_parallel),
                     cluster=ClusterConfig(accelerator="cpu", cpu_ranks=2), train=TrainConfig(**train))


def test_micro_batch_1_and_full_recompute_are_suggested_where_they_fit():
    # gpt_125m, ZeRO-0, micro-batch 4: 13.43 GiB per device, mostly activations (2,048 tokens)
    assert would_fit(gpt_125m_on_the_cpu(micro_batch_size=4), 10 * GIB) == [
        "train.micro_batch_size=1 (5.88 GiB)", "train.activation_checkpointing=full (9.20 GiB)",
        "model=tiny (169,728 parameters, 0.01 GiB)"]
    assert would_fit(gpt_125m_on_the_cpu(micro_batch_size=4), 9 * GIB) == [
        "train.micro_batch_size=1 (5.88 GiB)", "model=tiny (169,728 parameters, 0.01 GiB)"]
    assert would_fit(gpt_125m_on_the_cpu(micro_batch_size=2), 5 * GIB) == [
        "model=tiny (169,728 parameters, 0.01 GiB)"]  # micro-batch 1 needs 5.88 GiB
    assert would_fit(gpt_125m_on_the_cpu(micro_batch_size=2), 6 * GIB) == [
        "train.micro_batch_size=1 (5.88 GiB)", "model=tiny (169,728 parameters, 0.01 GiB)"]
    # either batch field may be set: the other takes up the samples
    for train in (dict(grad_accum_steps=3), dict(global_batch_size=8)):
        assert would_fit(gpt_125m_on_the_cpu(micro_batch_size=4, **train), 7 * GIB) == [
            "train.micro_batch_size=1 (5.88 GiB)", "model=tiny (169,728 parameters, 0.01 GiB)"]
    # both set fix the micro-batch too
    assert would_fit(gpt_125m_on_the_cpu(micro_batch_size=4, global_batch_size=8, grad_accum_steps=1),
                     7 * GIB) == ["model=tiny (169,728 parameters, 0.01 GiB)"]


def test_micro_batch_1_keeps_a_set_global_batch_by_accumulating_more():
    # two pipeline stages, 4 samples per step: micro-batch 1 is 4 micro-batches, 2 of them in
    # flight at once (one per stage)
    assert would_fit(gpt_125m_on_the_cpu(2, micro_batch_size=4, global_batch_size=4), 5 * GIB) == [
        "train.micro_batch_size=1 (4.21 GiB)", "model=tiny (169,728 parameters, 0.00 GiB)"]
    # no global batch: accumulation stays 1, one micro-batch in flight
    assert would_fit(gpt_125m_on_the_cpu(2, micro_batch_size=4), 5 * GIB) == [
        "train.micro_batch_size=1 (3.58 GiB)", "model=tiny (169,728 parameters, 0.00 GiB)"]


def test_a_pipeline_is_offered_zero1_only():
    # DeepSpeed's pipeline engine takes ZeRO stage 0 or 1 (check_layout): ZeRO-1 at 0.84 GiB is
    # the only stage tried, and nothing above it is suggested when it does not fit
    pp2 = wide_on("cpu", name="pp2", pipeline_parallel=2, stage3_max_live_parameters=1_000_000_000)
    assert would_fit(pp2, 0.9 * GIB) == ["strategy.zero_stage=1 (0.84 GiB)", TINY_PRESET.format("0.00")]
    assert would_fit(pp2, 0.8 * GIB) == [TINY_PRESET.format("0.00")]
    # nothing fits alone: ZeRO-1 (not 2 or 3) is the layout tried on more nodes; the tiny GPT
    # needs 2.54 MiB per device, ZeRO-1 2.19 MiB on one node and 1.83 MiB on two, 1.57 on 8
    tiny_pp2 = tiny_on_slurm(name="pp2", pipeline_parallel=2, reduce_bucket_size=1000,
                             stage3_max_live_parameters=1000)
    assert would_fit(tiny_pp2, 1.8 * MIB) == ["strategy.zero_stage=1 on cluster.nodes=3 (0.00 GiB per rank)"]


def test_the_smaller_preset_is_the_largest_of_the_family_that_this_layout_can_build():
    def llama_8b(**strategy):
        return suite_cfg(model=model_presets()["llama3_1_8b"], strategy=StrategyConfig(**strategy),
                         cluster=ClusterConfig(scheduler="slurm", accelerator="cuda", gpus_per_node=2),
                         train=TrainConfig(micro_batch_size=1), precision=PrecisionConfig(name="bf16"))
    # Llama 3.2 3B does not fit in 80 GiB, 1B does (gpt presets are another family: never offered)
    assert would_fit(llama_8b(), 80 * GIB) == [
        "strategy.zero_stage=3 strategy.offload_optimizer=true strategy.offload_params=true (70.77 GiB)",
        "model=llama3_2_1b (1,235,814,400 parameters, 47.73 GiB)"]
    # Llama 3.2 ties its embeddings, which a pipeline does not build: the next preset that fits
    assert would_fit(llama_8b(name="pp2", pipeline_parallel=2), 80 * GIB) == [
        "model=llama_tiny (164,160 parameters, 1.00 GiB)"]


def test_on_gpus_the_most_offloaded_layout_is_the_one_tried_on_more_nodes():
    # the tiny GPT on GPUs: the CUDA context (1 GiB) plus 4.3 MiB; ZeRO-3 with both offloads
    # needs 1.1 MiB on one node, 0.9 MiB on two; the activations alone keep it above 0.5 MiB
    cfg = suite_cfg(strategy=StrategyConfig(reduce_bucket_size=1000, stage3_max_live_parameters=1000),
                    cluster=ClusterConfig(scheduler="slurm", accelerator="cuda", gpus_per_node=2),
                    train=TrainConfig(micro_batch_size=1, activation_checkpointing="full"),
                    precision=PrecisionConfig(name="fp32"))
    assert would_fit(cfg, GIB + MIB) == [
        "strategy.zero_stage=3 strategy.offload_optimizer=true strategy.offload_params=true on cluster.nodes=2 "
        "(1.00 GiB per rank)"]
    assert would_fit(cfg, GIB + MIB // 2) == []


def test_a_change_that_needs_exactly_the_memory_there_is_fits():
    """The suggestions use the check's own rule: a run fits when it needs no more than there is."""
    def needs(cfg, plan):
        return predict_memory(cfg, plan)["required_bytes"]

    def variant(cfg, **strategy):
        return dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, **strategy))

    ddp = wide_on("cpu")
    plan = plan_run(ddp, check_memory=False)
    assert what_would_fit(ddp, plan, "device", needs(variant(ddp, zero_stage=1), plan)) == [
        "strategy.zero_stage=1 (1.26 GiB)", TINY_PRESET.format("0.00")]
    tiny = dataclasses.replace(ddp, model=model_presets()["tiny"])
    assert what_would_fit(ddp, plan, "device", needs(tiny, plan)) == [TINY_PRESET.format("0.00")]
    torch_ddp = wide_on("cpu", name="torch_ddp", engine="torch_ddp")
    plan = plan_run(torch_ddp, check_memory=False)
    assert what_would_fit(torch_ddp, plan, "device", needs(variant(torch_ddp, engine="fsdp2", zero_stage=3), plan)) \
        == ["strategy=fsdp2 (0.94 GiB)", TINY_PRESET.format("0.00")]
    gpus = wide_on("cuda")
    plan = plan_run(gpus, check_memory=False)
    offload = variant(gpus, zero_stage=1, offload_optimizer=True)
    assert what_would_fit(gpus, plan, "device", needs(offload, plan)) == [
        "strategy.zero_stage=1 strategy.offload_optimizer=true (1.84 GiB)", TINY_PRESET.format("1.00")]
    # ZeRO-1 on exactly as many nodes as the suggestion names, and on the most it looks at
    zero1 = wide_on("cpu", zero_stage=1, stage3_max_live_parameters=1_000_000_000)
    plan = plan_run(zero1, check_memory=False)
    for nodes in (3, 1024):
        on = dataclasses.replace(plan, nodes=nodes, world_size=2 * nodes, data_parallel_size=2 * nodes)
        assert what_would_fit(zero1, plan, "device", needs(zero1, on))[0].startswith(f"cluster.nodes={nodes} (")
    big = gpt_125m_on_the_cpu(micro_batch_size=4)
    plan = plan_run(big, check_memory=False)
    micro1 = dataclasses.replace(plan, micro_batch_size=1)
    assert what_would_fit(big, plan, "device", needs(big, micro1))[0] == "train.micro_batch_size=1 (5.88 GiB)"
    full = dataclasses.replace(big, train=dataclasses.replace(big.train, activation_checkpointing="full"))
    assert "train.activation_checkpointing=full (9.20 GiB)" in what_would_fit(big, plan, "device", needs(full, plan))
    # ZeRO-1 with DeepSpeed's 5e8-element bucket: a 5e7 one
    bucket = gpt_125m_on_the_cpu(micro_batch_size=1)
    bucket = variant(bucket, zero_stage=1)
    plan = plan_run(bucket, check_memory=False)
    small = variant(bucket, reduce_bucket_size=50_000_000)
    assert what_would_fit(bucket, plan, "device", needs(small, plan)) == [
        "strategy.reduce_bucket_size=5e+07 (4.74 GiB)", "model=tiny (169,728 parameters, 2.05 GiB)"]


# --- the DeepSpeed config, block by block -----------------------------------------------------------

def ds_of(cfg, accelerator="cpu", precision="fp32", micro=2, accum=1, global_batch=4):
    return deepspeed_config(cfg, accelerator, precision, micro, accum, global_batch)


def test_zero1_keeps_the_allgather_bucket_and_offload_is_not_pinned_on_the_cpu():
    cfg = suite_cfg(strategy=StrategyConfig(name="zero1", zero_stage=1, offload_optimizer=True,
                                            reduce_bucket_size=1000, allgather_bucket_size=2000,
                                            overlap_comm=True, contiguous_gradients=False))
    assert ds_of(cfg)["zero_optimization"] == {
        "stage": 1, "reduce_bucket_size": 1000, "allgather_bucket_size": 2000, "overlap_comm": True,
        "contiguous_gradients": False,
        "offload_optimizer": {"device": "cpu", "pin_memory": False}}  # pinning is for GPU copies


def test_zero3_writes_only_the_zero_plus_plus_fields_that_are_on():
    cfg = suite_cfg(strategy=StrategyConfig(name="zero3", zero_stage=3, zero_quantized_gradients=True,
                                            stage3_prefetch_bucket_size=11, stage3_param_persistence_threshold=12,
                                            stage3_max_live_parameters=13, stage3_max_reuse_distance=14,
                                            offload_optimizer=True, offload_params=True))
    assert ds_of(cfg, "cuda")["zero_optimization"] == {
        "stage": 3, "reduce_bucket_size": 500_000_000, "overlap_comm": True, "contiguous_gradients": True,
        "stage3_prefetch_bucket_size": 11, "stage3_param_persistence_threshold": 12,
        "stage3_max_live_parameters": 13, "stage3_max_reuse_distance": 14,
        "zero_quantized_gradients": True,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True}}
    hpz = suite_cfg(strategy=StrategyConfig(zero_stage=3, zero_quantized_weights=True, zero_hpz_partition_size=2))
    block = ds_of(hpz, "cuda")["zero_optimization"]
    assert (block["zero_quantized_weights"], block["zero_hpz_partition_size"]) == (True, 2)
    assert "zero_quantized_gradients" not in block


def test_optional_deepspeed_blocks_appear_only_when_asked_for():
    cfg = suite_cfg(strategy=StrategyConfig(name="tp2", zero_stage=1, tensor_parallel=2),
                    optimizer=OptimizerConfig(name="adagrad", scheduler="none", gradient_clipping=0.5),
                    train=TrainConfig(activation_checkpointing="partitioned", profile_comms=True),
                    precision=PrecisionConfig(name="fp16", loss_scale=128.0, initial_scale_power=8))
    config = ds_of(cfg, "cuda", "fp16", micro=3, accum=5, global_batch=15)
    assert config["train_batch_size"] == 30  # 15 samples x the 2 TP ranks DeepSpeed counts as data parallel
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (3, 5)
    assert config["gradient_clipping"] == 0.5 and "scheduler" not in config
    assert config["fp16"] == {"enabled": True, "loss_scale": 128.0, "initial_scale_power": 8}
    assert "bf16" not in config
    assert config["tensor_parallel"]["autotp_size"] == 2
    assert config["activation_checkpointing"] == {
        "partition_activations": True, "cpu_checkpointing": False,  # partitioned: kept on the device
        "contiguous_memory_optimization": False, "synchronize_checkpoint_boundary": False}
    assert config["comms_logger"] == {"enabled": True, "verbose": False, "prof_all": True, "debug": False}
    assert "zero_allow_untested_optimizer" not in config  # Adagrad is on DeepSpeed's ZeRO list
    plain = ds_of(suite_cfg(optimizer=OptimizerConfig(name="sgd")))
    assert plain["optimizer"] == {"type": "SGD", "params": {"lr": 1e-4, "momentum": 0.0, "weight_decay": 0.0}}
    assert not {"tensor_parallel", "activation_checkpointing", "comms_logger", "fp16", "bf16",
                "zero_allow_untested_optimizer"} & set(plain)  # SGD under ZeRO-0: nothing to allow


def test_warmup_decay_runs_at_least_one_step_past_the_warm_up():
    # 1 + 1 steps of the run, but 5 warm-up steps of the schedule: DeepSpeed needs total > warm-up
    cfg = suite_cfg(optimizer=OptimizerConfig(scheduler="warmup_decay", lr_warmup_steps=5, lr=0.5),
                    train=TrainConfig(warmup_steps=1, timed_steps=1))
    assert ds_of(cfg)["scheduler"] == {"type": "WarmupDecayLR", "params": {
        "warmup_min_lr": 0.0, "warmup_max_lr": 0.5, "warmup_num_steps": 5, "warmup_type": "linear",
        "total_num_steps": 6}}
    longer = suite_cfg(optimizer=OptimizerConfig(scheduler="warmup_decay", lr_warmup_steps=5),
                       train=TrainConfig(warmup_steps=4, timed_steps=7))
    assert ds_of(longer)["scheduler"]["params"]["total_num_steps"] == 11  # 4 + 7


def test_adam_auto_is_torchs_on_cpus_fused_on_gpus_and_cpu_adam_under_offload_on_gpus():
    assert adam_implementation("auto", "cpu", False) == "torch"
    assert adam_implementation("auto", "cpu", True) == "torch"  # offload on the CPU changes nothing
    assert adam_implementation("auto", "cuda", False) == "torch_fused"
    assert adam_implementation("auto", "cuda", True) == "deepspeed"
    assert adam_implementation("torch_fused", "cpu", False) == "torch_fused"  # asked for: as asked
    assert adam_implementation("torch", "cuda", True) == "torch"


def test_the_ops_deepspeed_compiles_name_the_field_that_asks_for_them():
    adagrad = suite_cfg(strategy=StrategyConfig(name="zero2_offload", zero_stage=2, offload_optimizer=True),
                        optimizer=OptimizerConfig(name="adagrad"))
    assert compiled_ops(adagrad, "cuda") == (
        ("cpu_adagrad", "strategy=zero2_offload (ZeRO-Offload) with optimizer=adagrad"),)
    assert compiled_ops(suite_cfg(optimizer=OptimizerConfig(name="adagrad")), "cuda") == ()
    quantized = suite_cfg(strategy=StrategyConfig(zero_stage=3, zero_quantized_weights=True),
                          optimizer=OptimizerConfig(implementation="deepspeed"))
    assert compiled_ops(quantized, "cuda") == (
        ("fused_adam", "optimizer.implementation=deepspeed"),
        ("quantizer", "strategy.zero_quantized_weights/zero_quantized_gradients"))
    gradients = suite_cfg(strategy=StrategyConfig(zero_stage=3, zero_quantized_gradients=True))
    assert compiled_ops(gradients, "cuda") == (
        ("quantizer", "strategy.zero_quantized_weights/zero_quantized_gradients"),)
    # offloaded Adam is DeepSpeed's CPU-Adam unless torch's is asked for
    offload = StrategyConfig(name="zero3_offload", zero_stage=3, offload_optimizer=True)
    assert compiled_ops(suite_cfg(strategy=offload, optimizer=OptimizerConfig(name="adamw")), "cpu") == ()
    assert compiled_ops(suite_cfg(strategy=offload, optimizer=OptimizerConfig(name="adamw", implementation="torch")),
                        "cuda") == ()


def test_a_config_is_typed_from_hydras_node_a_plain_dict_or_itself():
    typed = suite_cfg()
    assert to_object(typed) is typed
    plain = {"model": {"name": "tiny", "n_layers": 3}, "hydra": {"job": {"name": "x"}}}
    assert to_object(plain).model.n_layers == 3  # hydra's own node is dropped
    node = OmegaConf.create({"train": {"micro_batch_size": 5, "global_batch_size": "${.micro_batch_size}"},
                             "hydra": {"unresolvable": "${oc.env:NOT_SET_ANYWHERE_12345}"}})
    assert to_object(node).train.global_batch_size == 5  # resolved, node by node
    with pytest.raises(ConfigError, match=r"^model\.n_layerz is not a field of ModelConfig; known fields: \["):
        to_object({"model": {"n_layerz": 3}})
    # a stray top-level override (+seed=5) is refused by name, as any unknown key
    with pytest.raises(ConfigError, match=r"^seed is not a field of SuiteConfig; known fields: \['cluster', "):
        to_object(OmegaConf.create({"seed": 5, "train": {"micro_batch_size": 3}}))


# --- the plan as a whole -------------------------------------------------------------------------

def test_a_torch_baseline_gets_the_torch_optimizer_and_no_scheduler_when_there_is_none():
    cfg = suite_cfg(strategy=StrategyConfig(name="torch_ddp", engine="torch_ddp"),
                    optimizer=OptimizerConfig(name="adam", scheduler="none", weight_decay=0.05),
                    cluster=ClusterConfig(accelerator="cuda", gpus_per_node=2))
    config = plan_run(cfg).torch_config
    # DeepSpeed's adam_w_mode / torch_adam are its own switches: torch's Adam gets neither
    assert config["optimizer"] == {"class": "torch.optim.Adam", "params": {
        "lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05, "fused": True}}
    assert config["lr_scheduler"] is None


def test_a_plan_made_without_local_gpus_runs_on_the_cpu_and_is_checked_for_memory():
    plan = plan_run(suite_cfg(cluster=ClusterConfig(accelerator="auto", cpu_ranks=3)))
    assert (plan.accelerator, plan.precision, plan.ranks_per_node, plan.world_size) == ("cpu", "fp32", 3, 3)
    with pytest.raises(ConfigError, match="more than cluster.gpu_memory_gb=0.001"):
        plan_run(suite_cfg(cluster=ClusterConfig(accelerator="cpu", gpu_memory_gb=0.001)))


def test_the_sizes_a_plan_ships_are_whole_numbers():
    # 8 ranks, Ulysses over 2: 4 replicas; 16 samples / (micro 2 x 4) = 2 steps of accumulation
    plan = plan_run(suite_cfg(strategy=StrategyConfig(name="sp2", zero_stage=3, sequence_parallel=2),
                              cluster=ClusterConfig(accelerator="cpu", cpu_ranks=8),
                              train=TrainConfig(micro_batch_size=2, global_batch_size=16)))
    shipped = json.loads(json.dumps(plan.to_dict()))
    sizes = {k: shipped[k] for k in ("world_size", "data_parallel_size", "sequence_parallel", "micro_batch_size",
                                     "grad_accum_steps", "global_batch_size")}
    assert sizes == {"world_size": 8, "data_parallel_size": 4, "sequence_parallel": 2, "micro_batch_size": 2,
                     "grad_accum_steps": 2, "global_batch_size": 16}
    assert all(type(v) is int for v in sizes.values())  # DeepSpeed and the launcher take counts, not floats
    assert [shipped["ds_config"][k] for k in ("train_batch_size", "gradient_accumulation_steps")] == [16, 2]
    assert all(type(shipped["ds_config"][k]) is int for k in ("train_batch_size", "gradient_accumulation_steps"))


def test_overlap_comm_left_null_is_deepspeeds_own_default_and_an_explicit_value_wins():
    # DeepSpeed 0.19.8 turns overlap_comm on for stage 3 and off for 1-2 when the config says
    # nothing; the suite writes that out, so ZeRO-3 overlaps as FSDP2 does (it sent false)
    for stage, expected in ((1, False), (2, False), (3, True)):
        cfg = suite_cfg(strategy=StrategyConfig(name=f"zero{stage}", zero_stage=stage))
        assert ds_of(cfg, "cuda")["zero_optimization"]["overlap_comm"] is expected, stage
    for stage in (1, 2, 3):
        for asked in (True, False):
            cfg = suite_cfg(strategy=StrategyConfig(name="z", zero_stage=stage, overlap_comm=asked))
            assert ds_of(cfg, "cuda")["zero_optimization"]["overlap_comm"] is asked


def test_the_engine_comparison_says_what_overlapped_on_each_side():
    import json

    from suite.report.analysis import engine_settings

    config = lambda **strategy: json.dumps({"strategy": strategy})  # noqa: E731
    assert engine_settings("deepspeed", 3, config(overlap_comm=None, stage3_prefetch_bucket_size=50_000_000)) == \
        "overlap_comm on, prefetch bucket 5e+07 elements"
    assert engine_settings("deepspeed", 2, config(overlap_comm=None)) == "overlap_comm off"
    assert engine_settings("deepspeed", 3, config(overlap_comm=False, stage3_prefetch_bucket_size=1000)) == \
        "overlap_comm off, prefetch bucket 1e+03 elements"
    assert engine_settings("fsdp2", None, config(fsdp_reshard_after_forward=False)).startswith(
        "reshard_after_forward off; prefetch: FSDP2's default")
    assert engine_settings("torch_ddp", None, None).startswith("all-reduce in 25 MiB buckets")


# --- partitioned activation checkpointing, and DeepSpeed's own config validation at planning ---

@pytest.mark.parametrize("strategy", [dict(), dict(sequence_parallel=2), dict(zero_stage=2)])
def test_partitioned_checkpointing_needs_tensor_parallel_ranks_to_partition_over(strategy):
    cfg = suite_cfg(strategy=StrategyConfig(**strategy), train=TrainConfig(activation_checkpointing="partitioned"))
    assert refusal(check_layout, cfg, 2) == (
        "train.activation_checkpointing=partitioned with strategy.tensor_parallel=1: DeepSpeed partitions "
        "checkpointed activations across tensor-parallel ranks only, and with one there is nothing to partition "
        "over; use it with strategy.tensor_parallel > 1, or full (torch's checkpoint per block) or cpu "
        "(DeepSpeed's, kept in host memory)")
    # cpu checkpointing stays allowed; partitioned with tensor-parallel ranks too
    check_layout(suite_cfg(strategy=StrategyConfig(**strategy), train=TrainConfig(activation_checkpointing="cpu")), 2)
    check_layout(suite_cfg(strategy=StrategyConfig(tensor_parallel=2),
                           train=TrainConfig(activation_checkpointing="partitioned")), 2)


def test_the_sp2_partitioned_layout_found_failing_in_deepspeed_initialize_is_refused_at_planning(compose_cfg):
    with pytest.raises(ConfigError, match="train.activation_checkpointing=partitioned with strategy.tensor_parallel=1"):
        plan_run(compose_cfg("strategy=sp2", "train.activation_checkpointing=partitioned"))


def test_deepspeed_checks_batch_arithmetic_against_the_world_size_each_engine_counts():
    from suite.plan import deepspeed_world_sizes

    def worlds(**strategy):
        cfg = suite_cfg(strategy=StrategyConfig(**strategy), cluster=ClusterConfig(accelerator="cpu", cpu_ranks=4))
        return deepspeed_world_sizes(plan_run(cfg, check_memory=False))

    # AutoTP: no mpu, the whole world (train_batch_size counts the TP ranks); pipeline: its grid's
    # data parallel; Ulysses: world / sp; checkpointing.configure: every rank
    assert worlds() == {"engine": 4, "checkpointing": 4}
    assert worlds(tensor_parallel=2) == {"engine": 4, "checkpointing": 4}
    assert worlds(pipeline_parallel=2) == {"engine": 2, "checkpointing": 4}
    assert worlds(sequence_parallel=2) == {"engine": 2, "checkpointing": 4}


def test_a_config_deepspeed_refuses_is_refused_at_planning_in_deepspeeds_words():
    from suite.plan import check_deepspeed_config

    cfg = suite_cfg()
    plan = plan_run(cfg, check_memory=False)
    wrong = dataclasses.replace(plan, ds_config={**plan.ds_config, "train_batch_size": 2})
    message = refusal(check_deepspeed_config, cfg, wrong)
    assert message.startswith("DeepSpeed refuses this run's config (deepspeed.initialize, checked at planning "
                              "with the run's world size 2: data parallel 2, tensor 1, pipeline 1, sequence 1; ")
    assert message.endswith("AssertionError: Check batch related parameters. train_batch_size is not equal to "
                            "micro_batch_per_gpu * gradient_acc_step * world_size 2 != 2 * 1 * 2")
    removed = dataclasses.replace(plan, ds_config={**plan.ds_config, "zero_optimization": {
        "stage": 3, "mics_shard_size": 2}})  # a block DeepSpeed itself rejects
    assert "MiCS ZeRO-3 sharding has been removed" in refusal(check_deepspeed_config, cfg, removed)


def test_the_checkpointing_config_is_checked_as_deepspeed_checkpointing_configure_reads_it():
    """checkpointing.configure(mpu=None) counts every rank, so under Ulysses the config says
    sequence_parallel_size (DeepSpeed's own key); without it DeepSpeed refuses what the suite
    found dying in the runs: 2 != 2 * 1 * 2."""
    from suite.plan import _deepspeed_verdict, check_deepspeed_config

    cfg = suite_cfg(strategy=StrategyConfig(sequence_parallel=2), train=TrainConfig(activation_checkpointing="cpu"))
    plan = plan_run(cfg, check_memory=False)
    check_deepspeed_config(cfg, plan)  # passes, with sequence_parallel_size = 2
    assert _deepspeed_verdict(plan.ds_config, plan.world_size, None) == (
        "AssertionError: Check batch related parameters. train_batch_size is not equal to "
        "micro_batch_per_gpu * gradient_acc_step * world_size 2 != 2 * 1 * 2")


def test_every_strategy_preset_plans_past_deepspeeds_validation(compose_cfg):
    """No false refusal: each preset's plan, with DeepSpeed's checkpointing and on GPUs, is one
    DeepSpeed accepts (the world sizes it counts are the run's)."""
    from conftest import CONF

    from suite.plan import _DEEPSPEED_CHECKS

    for preset in sorted(p.stem for p in (CONF / "strategy").glob("*.yaml")):
        for overrides in ([], ["train.activation_checkpointing=cpu", "train.grad_accum_steps=2"],
                          ["cluster.accelerator=cuda", "cluster.gpus_per_node=4", "precision=bf16"]):
            try:
                plan_run(compose_cfg(f"strategy={preset}", *overrides), check_memory=False)
            except ConfigError as exc:
                assert "DeepSpeed refuses" not in str(exc), (preset, overrides, str(exc))
    checked = len(_DEEPSPEED_CHECKS)
    plan_run(compose_cfg("strategy=zero2"), check_memory=False)
    assert len(_DEEPSPEED_CHECKS) == checked  # one check per distinct config
