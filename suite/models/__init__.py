"""Model families as plug-ins (after torchtitan's TrainSpec registry): one package per family,
chosen by `model.family`. A family's `__init__.py` is pure Python (no torch), so planning and
the report can use it without loading torch; its `model.py` holds the torch modules and is
imported only where a model is built. A family provides:

- `check(m)`: refuse a shape that family cannot build, naming the field (ConfigError);
- `check_layout(m, tp, sp)`: refuse tensor/sequence-parallel degrees its heads cannot split;
- `param_count(m)`: {"total", "embedding", "non_embedding", "active", "active_non_embedding"}
  parameters (embedding = lookup tables only; the output head is a matmul and counts as
  non-embedding, tied or not; active = what one token passes through: all of a dense model,
  the router, k routed and the shared experts of a mixture of experts, suite/models/moe.py);
- `largest_layer_params(m)`: the biggest single weight (DeepSpeed's ZeRO-3 estimator needs it);
- `TP_PARTITION`: DeepSpeed AutoTP's partition config for the family's layer names;
- `CHECKPOINTABLE_LAYERS`: class names the pipeline engine may recompute;
- `build(m, seed, checkpoint, sequence_group)`: the model as one nn.Module, whose forward takes
  (batch, slice + 1) token ids and returns the mean next-token loss;
- `pipeline_layers(m, seed)`: the same model as DeepSpeed LayerSpecs, ending in logits.

The FLOPs per token of every family come from one formula (`flops_per_token` below): they need
only the active non-embedding parameters and the attention shape (layers, query heads, head size),
which every decoder has. Adding a family: a package here, its name in FAMILIES, its conf/model
files and its tests (docs/models.md)."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict

FAMILIES = ("gpt", "llama")


def family(name: str) -> ModuleType:
    """The family's plug-in module (suite.models.<name>)."""
    if name not in FAMILIES:
        from suite.config import ConfigError

        raise ConfigError(f"model.family={name!r} is not allowed; choose one of {list(FAMILIES)}")
    return importlib.import_module(f"suite.models.{name}")


def param_count(m: Any) -> Dict[str, int]:
    """{"total", "embedding", "non_embedding", "active", "active_non_embedding"} parameters of
    model config `m` (active = per token; equal to total and non_embedding for a dense model)."""
    counts = dict(family(m.family).param_count(m))
    counts.setdefault("active", counts["total"])
    # every lookup table is passed through by each token; a tied head counts again as a matmul
    tied_head = counts["non_embedding"] - (counts["total"] - counts["embedding"])
    counts.setdefault("active_non_embedding", counts["active"] - counts["embedding"] + tied_head)
    return counts


def head_dim(m: Any) -> int:
    """Each attention head's size: model.head_dim, else d_model / n_heads."""
    return m.head_dim if getattr(m, "head_dim", None) is not None else m.d_model // m.n_heads


def flops_per_token(m: Any, causal: bool = False) -> float:
    """Training FLOPs per token, 6N + 12 L H Q T (PaLM appendix B, as torchtitan counts): N is
    every parameter in a matmul (all but the embedding tables; the output head counts), L H Q T
    the attention scores and their weighted sum, forward and backward, over the whole T x T
    square. causal=True halves that attention term (6N + 6 L H Q T): only the lower triangle is
    needed, which is how Megatron-Core counts now (docs/models.md says which published figures
    use which). A mixture of experts counts the parameters a token passes through (N = active
    non-embedding: the router, its k experts, the shared experts), as torchtitan does."""
    attention = 12.0 * m.n_layers * m.n_heads * head_dim(m) * m.seq_len
    return 6.0 * param_count(m)["active_non_embedding"] + (attention / 2 if causal else attention)


def recompute_flops_per_token(m: Any) -> float:
    """Extra FLOPs per token of full activation checkpointing: one more forward, 2N + 4 L H Q T."""
    return (2.0 * param_count(m)["active_non_embedding"]
            + 4.0 * m.n_layers * m.n_heads * head_dim(m) * m.seq_len)


def check_heads(m: Any, kv_heads: int, tp: int, sp: int) -> None:
    """Tensor and sequence parallelism give each rank whole heads: query and key/value heads
    must divide by the degree (Ulysses also gives each rank an equal slice of the sequence)."""
    from suite.config import ConfigError

    kv = "" if kv_heads == m.n_heads else f" and model.n_kv_heads={kv_heads}"
    if m.n_heads % tp or kv_heads % tp:
        raise ConfigError(f"model.n_heads={m.n_heads}{kv} must be divisible by "
                          f"strategy.tensor_parallel={tp} (each rank keeps whole heads)")
    if m.n_heads % sp or kv_heads % sp or m.seq_len % sp:
        raise ConfigError(f"model.n_heads={m.n_heads}{kv} and model.seq_len={m.seq_len} must be "
                          f"divisible by strategy.sequence_parallel={sp} (Ulysses gives each rank "
                          "whole heads and an equal slice of the sequence)")


def describe(m: Any) -> str:
    """One line for the dry run: what is about to be trained."""
    counts = param_count(m)
    active = f" ({counts['active']:,} active per token)" if counts["active"] != counts["total"] else ""
    return (f"{m.name} ({m.family}): {counts['total']:,} parameters{active}, "
            f"{flops_per_token(m):.4g} FLOPs/token ({flops_per_token(m, causal=True):.4g} causal)")
