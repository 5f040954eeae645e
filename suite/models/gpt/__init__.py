"""The GPT family: a GPT-3-style decoder (pre-LayerNorm blocks, learned positions, full
multi-head attention with a fused QKV projection, GELU MLP, biases, untied output head).
Pure Python: the torch modules are in model.py."""
from __future__ import annotations

from typing import Any, Dict, List

from suite.models import check_heads

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


def check_layout(m: Any, tp: int, sp: int, pp: int) -> None:
    check_heads(m, m.n_heads, tp, sp)


def param_count(m: Any) -> Dict[str, int]:
    """Untied output head, biases in every Linear and LayerNorm."""
    d, f = m.d_model, ffn_dim(m)
    per_block = (
        2 * 2 * d            # two LayerNorms (weight, bias)
        + d * 3 * d + 3 * d  # fused QKV projection
        + d * d + d          # attention output projection
        + d * f + f          # MLP up
        + f * d + d          # MLP down
    )
    embedding = m.vocab_size * d + m.seq_len * d  # token and position tables (lookups, no matmul)
    head = 2 * d + d * m.vocab_size               # final LayerNorm + output projection (no bias)
    total = embedding + m.n_layers * per_block + head
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def largest_layer_params(m: Any) -> int:
    return max(m.vocab_size * m.d_model, 3 * m.d_model ** 2, m.d_model * ffn_dim(m))


def build(m: Any, seed: int, checkpoint=None, sequence_group=None):
    from suite.models.gpt.model import gpt

    return gpt(m, seed, checkpoint=checkpoint, sequence_group=sequence_group)


def pipeline_layers(m: Any, seed: int) -> List:
    from suite.models.gpt.model import pipeline_layers as layers

    return layers(m, seed)
