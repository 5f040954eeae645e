"""The GPT family: a GPT-3-style decoder (pre-LayerNorm blocks, learned positions, full
multi-head attention with a fused QKV projection, GELU MLP, biases, untied output head).
Pure Python: the torch modules are in model.py."""
from __future__ import annotations

from typing import Any, Dict, List

from suite.models import check_heads, moe

# AutoTP cannot find a policy for a custom model (docs/behaviour.md): this says which weights
# split by output (column) and which by input (row). The fused QKV splits as three equal parts,
# so each rank keeps whole heads; the embeddings and the output head replicate.
TP_PARTITION = {
    "use_default_specs": False,
    "layer_specs": [
        {"patterns": [r".*\.qkv\.weight$"], "partition_type": "column", "shape": [3, -1],
         "partition_dim": 0},
        {"patterns": [r".*\.mlp_up\.weight$"], "partition_type": "column"},
        {"patterns": [r".*\.proj\.weight$", r".*\.mlp_down\.weight$"], "partition_type": "row"},
    ],
}
CHECKPOINTABLE_LAYERS = ["Block"]


def ffn_dim(m: Any) -> int:
    return 4 * m.d_model if m.ffn_dim is None else m.ffn_dim


def check(m: Any) -> None:
    from suite.config import ConfigError

    if m.n_kv_heads not in (None, m.n_heads):
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads}: the gpt family has full multi-head "
                          "attention; leave it null, or use model.family=llama for grouped-query attention")
    if m.tie_embeddings:
        raise ConfigError("model.tie_embeddings=true: the gpt family has an untied output head")
    if m.head_dim not in (None, m.d_model // m.n_heads) or m.qk_norm:
        raise ConfigError(f"model.head_dim={m.head_dim} / model.qk_norm={m.qk_norm}: the gpt family's "
                          "heads are d_model / n_heads wide, without query/key norms; leave them "
                          "unset, or use model.family=llama")
    moe.check(m)


def check_layout(m: Any, tp: int, sp: int, pp: int) -> None:
    check_heads(m, m.n_heads, tp, sp)


def param_count(m: Any) -> Dict[str, int]:
    """Untied output head, biases in every Linear and LayerNorm. A mixture of experts replaces
    the GELU MLP by bias-free SwiGLU experts behind a router (suite/models/moe.py)."""
    d, f = m.d_model, ffn_dim(m)
    attention = (
        2 * 2 * d            # two LayerNorms (weight, bias)
        + d * 3 * d + 3 * d  # fused QKV projection
        + d * d + d          # attention output projection
    )
    if moe.is_moe(m):
        mlp = moe.mlp_params(m, f)
    else:
        mlp = dict.fromkeys(("total", "active"), d * f + f + f * d + d)  # MLP up, MLP down
    embedding = m.vocab_size * d + m.seq_len * d  # token and position tables (lookups, no matmul)
    head = 2 * d + d * m.vocab_size               # final LayerNorm + output projection (no bias)
    total = embedding + m.n_layers * (attention + mlp["total"]) + head
    active = embedding + m.n_layers * (attention + mlp["active"]) + head
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding,
            "active": active, "active_non_embedding": active - embedding}


def largest_layer_params(m: Any) -> int:
    f = moe.expert_ffn_dim(m, ffn_dim(m)) if moe.is_moe(m) else ffn_dim(m)
    shared = m.n_shared_experts * f if moe.is_moe(m) else 0
    return max(m.vocab_size * m.d_model, 3 * m.d_model ** 2, m.d_model * f, m.d_model * shared)


def build(m: Any, seed: int, checkpoint=None, sequence_group=None, expert_parallel: int = 1):
    from suite.models.gpt.model import gpt

    return gpt(m, seed, checkpoint=checkpoint, sequence_group=sequence_group,
               expert_parallel=expert_parallel)


def pipeline_layers(m: Any, seed: int) -> List:
    from suite.models.gpt.model import pipeline_layers as layers

    return layers(m, seed)


def activation_elements(m: Any, accelerator: str = "cuda") -> Dict[str, Any]:
    """What autograd keeps for backward in one Block (model.py), per token, and in the Head
    (final LayerNorm + output projection; the loss is suite.memory's), as element counts.
    Measured with torch.autograd.graph.saved_tensors_hooks in tests/test_memory.py, one entry
    per distinct storage (views of one tensor count once):

    - "activation": per token per layer, in the activation dtype (bf16/fp16/fp32);
    - "fp32": per token per layer, fp32 whatever the precision;
    - "fp32_per_position": per sequence position per layer (none here);
    - "split_by_tensor_parallel": the names above that AutoTP divides over its ranks (the
      heads and the MLP's hidden units); the others are replicated on every TP rank;
    - "head_activation", "head_fp32": per token, once (not per layer).

    Korthikanti et al. 2022 count 34 s b h bytes per GPT layer in 16-bit + 5 a s^2 b for the
    score matrices; with no dropout (their 2 sbh of masks) that is our 8 d + 2 f = 16 d
    elements at f = 4 d, and SDPA keeps only its output and one logsumexp per head and
    token instead of the s x s scores (docs/memory.md)."""
    d, f, h = m.d_model, ffn_dim(m), m.n_heads
    if moe.is_moe(m):  # approximate (not measured), as the llama family's
        f = (m.experts_per_token + m.n_shared_experts) * moe.expert_ffn_dim(m, ffn_dim(m))
    activation = {
        "ln_1_input": d,        # the block input x, kept by ln_1 (native_layer_norm)
        "qkv_input": d,         # ln_1's output, kept by the qkv Linear
        "qkv_output": 3 * d,    # q, k, v: three views of one qkv output, kept by SDPA
        "attention_output": d,  # SDPA's output, kept by SDPA; proj keeps the same storage
                                # (the kernel writes it as (batch, seq, heads, head_dim), so
                                # transpose + reshape is a view, not a copy)
        "ln_2_input": d,        # x + attention, kept by ln_2
        "mlp_up_input": d,      # ln_2's output, kept by mlp_up
        "gelu_input": f,        # mlp_up's output, kept by GELU
        "mlp_down_input": f,    # GELU's output, kept by mlp_down
    }
    fp32 = {"attention_logsumexp": h}  # SDPA's softmax normaliser, one per head and token
    # LayerNorm's mean and rstd, one each per token: fp32 on CUDA (its accumulation type), the
    # input's dtype on the CPU (measured: bf16 there)
    stats = {"ln_1_mean_rstd": 2, "ln_2_mean_rstd": 2}
    head_activation = {"ln_f_input": d,  # the last block's output, kept by ln_f
                       "head_input": d}  # ln_f's output, kept by the output projection
    head_stats = {"ln_f_mean_rstd": 2}
    (fp32 if accelerator == "cuda" else activation).update(stats)
    head_fp32 = dict(head_stats) if accelerator == "cuda" else {}
    if accelerator != "cuda":
        head_activation.update(head_stats)
    return {"activation": activation, "fp32": fp32, "fp32_per_position": {},
            "split_by_tensor_parallel": ("qkv_output", "attention_output", "attention_logsumexp",
                                         "gelu_input", "mlp_down_input"),
            "head_activation": head_activation, "head_fp32": head_fp32}
