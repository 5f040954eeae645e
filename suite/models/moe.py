"""Mixture of experts as a feature of every family (pure Python: planning and the report use it
without torch; the torch layer is suite/models/moe_layer.py). With `model.n_experts` > 1 each
block's MLP becomes a DeepSpeed-MoE layer (`deepspeed.moe.layer.MoE`): a bias-free router
(d_model x n_experts), top-`model.experts_per_token` routing, `n_experts` SwiGLU experts of
hidden size `model.moe_ffn_dim`, and optionally `model.n_shared_experts` shared experts that
every token passes through (one dense SwiGLU of n_shared x moe_ffn_dim, added to the routed
output, as DeepSeek-MoE and Qwen2-MoE have). `strategy.expert_parallel` (DeepSpeed's ep_size)
spreads each layer's experts over that many ranks.

Active parameters (torchtitan's convention): every parameter a token passes through, i.e.
embedding, head, attention, norms, the router, its k experts and the shared experts."""
from __future__ import annotations

from typing import Any, Dict


def is_moe(m: Any) -> bool:
    """Dense stays the default: n_experts 0 or 1 is the family's own MLP."""
    return (getattr(m, "n_experts", 0) or 0) > 1


def expert_ffn_dim(m: Any, family_ffn_dim: int) -> int:
    """Each expert's hidden size: model.moe_ffn_dim, else the family's MLP rule."""
    return m.moe_ffn_dim if m.moe_ffn_dim is not None else family_ffn_dim


def mlp_params(m: Any, family_ffn_dim: int) -> Dict[str, int]:
    """{"total", "active"} parameters of one block's MoE MLP: router d x E (no bias), E
    SwiGLU experts of 3 d f each (gate, up, down; no biases), shared experts 3 d (n_shared f);
    a token passes through the router, k experts and the shared experts."""
    d, f = m.d_model, expert_ffn_dim(m, family_ffn_dim)
    router, expert, shared = d * m.n_experts, 3 * d * f, 3 * d * m.n_shared_experts * f
    return {"total": router + m.n_experts * expert + shared,
            "active": router + m.experts_per_token * expert + shared}


def expert_params(m: Any, family_ffn_dim: int) -> int:
    """Parameters of every routed expert of every block (those DeepSpeed marks allreduce=False:
    expert parallelism splits them, ZeRO 1-2 partition them over the expert-data-parallel
    group); the router and the shared experts are dense parameters."""
    if not is_moe(m):
        return 0
    return m.n_layers * m.n_experts * 3 * m.d_model * expert_ffn_dim(m, family_ffn_dim)


def params_per_rank(m: Any, expert_parallel: int = 1) -> Dict[str, int]:
    """{"dense", "expert"}: the parameters one rank holds (and builds) under expert parallelism:
    all dense ones (replicated over data parallel as ever) and 1/ep of the routed experts, for
    the memory model (ZeRO 1-2 partition the dense states over dp ranks, the experts' over dp /
    ep ranks)."""
    from suite import models

    total = models.param_count(m)["total"]
    family = models.family(m.family)
    experts = expert_params(m, family.ffn_dim(m))
    return {"dense": total - experts, "expert": experts // expert_parallel}


def check(m: Any) -> None:
    """Refuse an MoE shape DeepSpeed-MoE cannot route, naming the field."""
    from suite.config import ConfigError

    if not is_moe(m):
        if m.n_shared_experts or m.moe_ffn_dim is not None:
            raise ConfigError(f"model.n_shared_experts={m.n_shared_experts} / model.moe_ffn_dim="
                              f"{m.moe_ffn_dim} apply to a mixture of experts only; set "
                              f"model.n_experts > 1 (now {m.n_experts}: the dense MLP) or leave them unset")
        return
    if m.experts_per_token > m.n_experts:
        raise ConfigError(f"model.experts_per_token={m.experts_per_token} must be at most "
                          f"model.n_experts={m.n_experts}")


def check_layout(m: Any, expert_parallel: int, data_parallel: int, tensor_parallel: int = 1,
                 pipeline_parallel: int = 1, sequence_parallel: int = 1, zero_stage: int = 0,
                 engine: str = "deepspeed", activation_checkpointing: str = "none",
                 contiguous_gradients: bool = True, compile: bool = False) -> None:
    """What an expert-parallel layout needs (for suite/plan.py), each refusal naming the fields.
    DeepSpeed 0.19.8: native MoE is refused under ZeRO-3 (engine.py
    _validate_zero3_moe_compatibility); ZeRO-2 asserts contiguous_gradients; its expert groups
    are built over data-parallel ranks (utils/groups.py _create_expert_and_data_parallel)."""
    from suite.config import ConfigError

    ep = expert_parallel
    if not is_moe(m):
        if ep > 1:
            raise ConfigError(f"strategy.expert_parallel={ep} needs a mixture of experts "
                              f"(model.n_experts > 1; {m.name} has {m.n_experts})")
        return
    if m.n_experts % ep:
        raise ConfigError(f"model.n_experts={m.n_experts} must be divisible by "
                          f"strategy.expert_parallel={ep} (each rank holds n_experts / ep experts)")
    if data_parallel % ep:
        raise ConfigError(f"strategy.expert_parallel={ep} must divide the data-parallel size "
                          f"{data_parallel} (DeepSpeed builds expert groups from data-parallel ranks)")
    if engine != "deepspeed":
        raise ConfigError(f"model.n_experts={m.n_experts} with strategy.engine={engine}: the mixture "
                          "of experts is DeepSpeed-MoE, trained by DeepSpeed's engine only")
    if zero_stage == 3:
        raise ConfigError(f"model.n_experts={m.n_experts} with strategy.zero_stage=3: DeepSpeed 0.19.8 "
                          "refuses its native MoE under ZeRO-3; use ZeRO stage 0, 1 or 2")
    for name, degree in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel),
                         ("sequence_parallel", sequence_parallel)):
        if degree > 1:
            raise ConfigError(f"model.n_experts={m.n_experts} with strategy.{name}={degree}: the "
                              "mixture of experts runs with data and expert parallelism (and ZeRO 0-2) only")
    if activation_checkpointing in ("partitioned", "cpu"):
        raise ConfigError(f"model.n_experts={m.n_experts} with train.activation_checkpointing="
                          f"{activation_checkpointing}: DeepSpeed's (reentrant) checkpointing gives the "
                          "router's load-balancing loss no gradient; use full or none")
    if zero_stage == 2 and not contiguous_gradients:
        raise ConfigError(f"model.n_experts={m.n_experts} with strategy.zero_stage=2 needs "
                          "strategy.contiguous_gradients=true (DeepSpeed asserts it for MoE)")
    if compile:
        raise ConfigError(f"model.n_experts={m.n_experts} with train.compile=true: DeepSpeed-MoE's "
                          "routing (data-dependent capacity) is not offered compiled")
