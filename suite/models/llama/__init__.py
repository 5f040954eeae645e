"""The Llama family (Llama 2/3 shape): pre-RMSNorm blocks, rotary positions, grouped-query
attention (model.n_kv_heads key/value heads shared by n_heads/n_kv_heads query heads each),
SwiGLU MLP, no biases, an output head untied unless model.tie_embeddings (Llama 3.2 1B and 3B
tie it). Pure Python: the torch modules are in model.py."""
from __future__ import annotations

from typing import Any, Dict, List

from suite.models import check_heads, head_dim, moe

# AutoTP partition (docs/layouts.md): q/k/v and gate/up split by output (column), each rank
# keeping whole query and key/value heads; o and down by input (row), followed by an
# all-reduce. Embedding, norms and the output head replicate.
TP_PARTITION = {
    "use_default_specs": False,
    "layer_specs": [
        {"patterns": [r".*\.(q|k|v|gate|up)_proj\.weight$"], "partition_type": "column"},
        {"patterns": [r".*\.(o|down)_proj\.weight$"], "partition_type": "row"},
    ],
}
CHECKPOINTABLE_LAYERS = ["Block"]


def kv_heads(m: Any) -> int:
    return m.n_heads if m.n_kv_heads is None else m.n_kv_heads


def ffn_dim(m: Any) -> int:
    """The MLP's hidden size; by default Llama's rule: 2/3 of 4 d, rounded up to 256."""
    if m.ffn_dim is not None:
        return m.ffn_dim
    return 256 * -(-(8 * m.d_model // 3) // 256)


def check(m: Any) -> None:
    from suite.config import ConfigError

    if m.n_heads % kv_heads(m):
        raise ConfigError(f"model.n_heads={m.n_heads} must be a multiple of model.n_kv_heads="
                          f"{kv_heads(m)} (each key/value head serves a whole group of query heads)")
    if head_dim(m) % 2:
        what = "model.head_dim" if m.head_dim is not None else "model.d_model / model.n_heads"
        raise ConfigError(f"{what} = {head_dim(m)} must be even "
                          "(rotary embeddings turn pairs of dimensions)")
    moe.check(m)


def check_layout(m: Any, tp: int, sp: int, pp: int) -> None:
    from suite.config import ConfigError

    check_heads(m, kv_heads(m), tp, sp)
    if m.tie_embeddings and (tp > 1 or pp > 1):
        raise ConfigError(f"model.tie_embeddings=true with strategy.tensor_parallel={tp} / "
                          f"strategy.pipeline_parallel={pp}: the tied output head is offered with data "
                          "parallel, ZeRO and sequence parallel only (set model.tie_embeddings=false)")


def param_count(m: Any) -> Dict[str, int]:
    """No biases; RMSNorm has a weight only; RoPE has no parameters. With model.qk_norm one
    RMSNorm of head_dim for the queries and one for the keys (shared by the heads, as Qwen3's).
    A mixture of experts replaces the MLP by the router, the experts and the shared experts
    (suite/models/moe.py); a token passes through the router, k experts and the shared ones."""
    d, hd = m.d_model, head_dim(m)
    attention = (
        2 * d                               # two RMSNorms
        + d * m.n_heads * hd                # q
        + 2 * d * kv_heads(m) * hd          # k, v
        + m.n_heads * hd * d                # o
        + (2 * hd if m.qk_norm else 0)      # q_norm, k_norm
    )
    if moe.is_moe(m):
        mlp = moe.mlp_params(m, ffn_dim(m))
    else:
        mlp = dict.fromkeys(("total", "active"), 3 * d * ffn_dim(m))  # gate, up, down
    embedding = m.vocab_size * d            # token table (a lookup, no matmul)
    head = d + (0 if m.tie_embeddings else d * m.vocab_size)  # final RMSNorm + output projection
    total = embedding + m.n_layers * (attention + mlp["total"]) + head
    active = embedding + m.n_layers * (attention + mlp["active"]) + head
    # the output projection is a matmul even when it shares the embedding's weights
    tied = d * m.vocab_size if m.tie_embeddings else 0
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding + tied,
            "active": active, "active_non_embedding": active - embedding + tied}


def largest_layer_params(m: Any) -> int:
    f = moe.expert_ffn_dim(m, ffn_dim(m)) if moe.is_moe(m) else ffn_dim(m)
    shared = m.n_shared_experts * f if moe.is_moe(m) else 0
    return max(m.vocab_size * m.d_model, m.d_model * m.n_heads * head_dim(m), m.d_model * f,
               m.d_model * shared)


def build(m: Any, seed: int, checkpoint=None, sequence_group=None, expert_parallel: int = 1):
    from suite.models.llama.model import llama

    return llama(m, seed, checkpoint=checkpoint, sequence_group=sequence_group,
                 expert_parallel=expert_parallel)


def pipeline_layers(m: Any, seed: int) -> List:
    from suite.models.llama.model import pipeline_layers as layers

    return layers(m, seed)


def activation_elements(m: Any, accelerator: str = "cuda") -> Dict[str, Any]:
    """What autograd keeps for backward in one Block (model.py), per token, and in the Head
    (final RMSNorm + output projection; the loss is suite.memory's), as element counts, in
    the same layout as the gpt family's (see its docstring): "activation" (activation dtype)
    and "fp32" per token per layer, "fp32_per_position" per sequence position per layer,
    "split_by_tensor_parallel", "head_activation" and "head_fp32" per token. Measured on the
    CPU with saved_tensors_hooks in tests/test_memory.py.

    RMSNorm differs by device: on CUDA torch runs its fused kernel, which keeps the input
    (activation dtype) and an fp32 rstd; on the CPU it runs the composite, which upcasts and
    keeps the fp32 input, the fp32 x * rstd (for the weight's gradient) and rstd (measured)."""
    d, f, h = m.d_model, ffn_dim(m), m.n_heads
    hd = head_dim(m)
    kv = kv_heads(m) * hd
    if moe.is_moe(m):
        # approximate (not measured): a token's k experts and the shared experts keep what one
        # dense MLP of their summed hidden size keeps; the dispatch buffers are not counted
        f = (m.experts_per_token + m.n_shared_experts) * moe.expert_ffn_dim(m, ffn_dim(m))
    activation = {
        "qkv_input": d,             # attention_norm's output: one storage, kept by q, k and v_proj
        "q_rotated": h * hd,        # rotate(q) (a new tensor), kept by SDPA
        "k_rotated": kv,            # rotate(k), kept by SDPA: n_kv_heads heads (SDPA shares
                                    # them among the query heads without copying)
        "v": kv,                    # v_proj's output (a view), kept by SDPA
        "attention_output": h * hd,  # SDPA's output, kept by SDPA; o_proj keeps the same storage
        "gate_up_input": d,         # mlp_norm's output: one storage, kept by gate and up_proj
        "gate_output": f,           # gate_proj's output, kept by SiLU
        "silu_output": f,           # kept by the multiply with up_proj's output
        "up_output": f,             # kept by that multiply
        "down_input": f,            # the product, kept by down_proj
    }
    fp32 = {"attention_logsumexp": h}  # SDPA's softmax normaliser, one per head and token
    head_activation = {"output_input": d}  # the final norm's output, kept by the output projection
    head_fp32: Dict[str, int] = {}
    for norm, into, head in (("attention_norm", activation, False), ("mlp_norm", activation, False),
                             ("norm", head_activation, True)):
        target = head_fp32 if head else fp32
        if accelerator == "cuda":
            # the block input / x + attention / last block's output, kept by the fused kernel
            into[f"{norm}_input"] = d
        else:
            target[f"{norm}_input_fp32"] = d       # input.float() (the input itself in fp32)
            target[f"{norm}_normalized_fp32"] = d  # x * rstd in fp32, kept by the weight multiply
        target[f"{norm}_rstd"] = 1                 # 1 / sqrt(mean(x^2) + eps), fp32
    # rotate() builds cos and sin (seq, head_dim/2) in fp32 for q and again for k; the
    # multiplies keep them (not the fp32 copies of q and k, whose gradients need only cos/sin):
    # 2 calls x 2 tables x head_dim/2 per position, shared by the micro-batch's samples
    per_position = {"rope_cos_sin": 2 * hd}
    return {"activation": activation, "fp32": fp32, "fp32_per_position": per_position,
            "split_by_tensor_parallel": ("q_rotated", "k_rotated", "v", "attention_output",
                                         "attention_logsumexp", "gate_output", "silu_output",
                                         "up_output", "down_input"),
            "head_activation": head_activation, "head_fp32": head_fp32}
