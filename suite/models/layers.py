"""Torch pieces every family shares: per-parameter initialisation from the parameter's name,
causal attention through scaled_dot_product_attention (grouped-query where the model has fewer
key/value heads; DeepSpeed-Ulysses around it under sequence parallelism) and the loss."""
from __future__ import annotations

import hashlib
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02


def parameter_seed(seed: int, name: str) -> int:
    """A stream per parameter: the run seed and the parameter's name in the plain model
    ("blocks.3.q_proj.weight"), hashed stably (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def init_parameters(module: nn.Module, seed: int, prefix: str, residual_outputs: Iterable[str] = (),
                    n_layers: int = 1) -> None:
    """N(0, 0.02) for every Linear and Embedding weight, each from its own stream named
    `prefix.<name>`, so the plain model, its pipeline stages and its ZeRO-3 partitions all start
    from the same weights; the projections named in `residual_outputs` (those writing into the
    residual stream) get 0.02 / sqrt(2 n_layers), as GPT-2 and nanoGPT do. Biases are zero,
    norm weights one (their constructors' defaults)."""
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        # Under ZeRO-3's zero.Init each nn.Linear is partitioned as soon as it is built: gather
        # the whole tensors to initialise them (rank 0's values are kept; all ranks agree).
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            _init(module, seed, prefix, tuple(residual_outputs), n_layers)
    else:
        _init(module, seed, prefix, tuple(residual_outputs), n_layers)


def _init(module: nn.Module, seed: int, prefix: str, residual_outputs: tuple, n_layers: int) -> None:
    for name, sub in module.named_modules():
        if not isinstance(sub, (nn.Linear, nn.Embedding)):
            continue
        full = f"{prefix}.{name}.weight" if name else f"{prefix}.weight"
        std = INIT_STD / math.sqrt(2 * n_layers) if name.split(".")[-1] in residual_outputs else INIT_STD
        device = sub.weight.device
        generator = torch.Generator(device=device).manual_seed(parameter_seed(seed, full))
        with torch.no_grad():
            sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator, device=device) * std)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(batch, seq, heads, head_dim) in and out; SDPA wants the heads before the sequence. With
    fewer key/value heads than query heads (grouped-query attention) SDPA shares each among
    heads/kv_heads consecutive query heads. is_causal and no explicit mask keep the flash
    kernels eligible on GPUs."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=k.shape[2] != q.shape[2])
    return y.transpose(1, 2)


class Attend(nn.Module):
    """causal_attention, or under DeepSpeed-Ulysses (`sequence_group`) DeepSpeed's
    DistributedAttention around it: q, k, v arrive as (batch, seq/sp, heads, head_dim); its
    all-to-alls scatter the heads (dim 2) and gather the sequence (dim 1), and the output goes
    back the other way, so each rank attends over the whole sequence with heads/sp heads."""

    def __init__(self, sequence_group=None) -> None:
        super().__init__()
        self.ulysses = None
        if sequence_group is not None:
            from deepspeed.sequence.layer import DistributedAttention

            self.ulysses = DistributedAttention(causal_attention, sequence_group,
                                                scatter_idx=2, gather_idx=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.ulysses is None:
            return causal_attention(q, k, v)
        return self.ulysses(q, k, v, batch_dim_idx=0)


def sequence_rank(sequence_group) -> int:
    """This rank's place in its Ulysses group (0 without sequence parallelism)."""
    return 0 if sequence_group is None else torch.distributed.get_rank(sequence_group)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


class Decoder(nn.Module):
    """The model every family builds from its own layers: embedding -> blocks -> head, returning
    the mean next-token loss of (batch, slice + 1) token ids (the whole sequence, or this rank's
    slice under Ulysses). `checkpoint`: None, or a function(block, x) that recomputes the block
    in backward. The attribute names (embedding, blocks.<i>, final) are the parameter names the
    initialisation streams are seeded from."""

    def __init__(self, embedding: nn.Module, blocks: Iterable[nn.Module], final: nn.Module,
                 checkpoint=None) -> None:
        super().__init__()
        self.embedding, self.blocks, self.final = embedding, nn.ModuleList(blocks), final
        self.checkpoint = checkpoint

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens[:, :-1])
        for block in self.blocks:
            x = block(x) if self.checkpoint is None else self.checkpoint(block, x)
        return next_token_loss(self.final(x), tokens[:, 1:])
