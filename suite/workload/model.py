"""A GPT decoder in the nanoGPT mould: pre-LayerNorm blocks, causal attention through
scaled_dot_product_attention (flash kernels on GPUs), GELU MLP, untied output head.

The same layers build the plain model and its pipeline form (`pipeline_layers`), and each
layer seeds its own initialisation, so every parallel layout starts from identical weights
(what the loss-parity check relies on). Attention takes its head count from the projection it
holds, so it also runs on a tensor-parallel shard of the heads (DeepSpeed AutoTP). Under
DeepSpeed-Ulysses sequence parallelism each rank holds a slice of the sequence; attention goes
through DeepSpeed's DistributedAttention, whose all-to-alls swap the sequence slice for a share
of the heads around the (causal, whole-sequence) SDPA call and back."""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


def _init(module: nn.Module, seed: int) -> None:
    """N(0, 0.02) weights and zero biases from the layer's own seed."""
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        # Under ZeRO-3's zero.Init each nn.Linear is partitioned as soon as it is built: gather
        # the whole tensors to initialise them (rank 0's values are kept; all ranks agree).
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            _init_weights(module, seed)
    else:
        _init_weights(module, seed)


def _init_weights(module: nn.Module, seed: int) -> None:
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            device = sub.weight.device
            generator = torch.Generator(device=device).manual_seed(seed)
            with torch.no_grad():
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator, device=device) * 0.02)
                if getattr(sub, "bias", None) is not None:
                    sub.bias.zero_()


class Embedding(nn.Module):
    """Token + position embedding: (batch, seq) token ids -> (batch, seq, d_model)."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int, seed: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        _init(self, seed)

    def forward(self, inputs: torch.Tensor, position_offset: int = 0) -> torch.Tensor:
        """position_offset: where this slice starts in the sequence (sequence parallel)."""
        positions = torch.arange(position_offset, position_offset + inputs.shape[1], device=inputs.device)
        return self.token_embedding(inputs) + self.position_embedding(positions)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(batch, seq, heads, head_dim) in and out; SDPA wants the heads before the sequence."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True)
    return y.transpose(1, 2)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, seed: int, sequence_group=None) -> None:
        """sequence_group: the Ulysses process group when the sequence is split across ranks."""
        super().__init__()
        self.head_dim = d_model // n_heads
        self.ulysses = None
        if sequence_group is not None:
            from deepspeed.sequence.layer import DistributedAttention

            # q, k, v are (batch, seq/sp, heads, head_dim): scatter the heads (dim 2), gather
            # the sequence (dim 1); the output goes back the other way.
            self.ulysses = DistributedAttention(_causal_attention, sequence_group,
                                                scatter_idx=2, gather_idx=1)
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)  # [Q; K; V] along the output dim
        self.proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp_up = nn.Linear(d_model, 4 * d_model)
        self.mlp_down = nn.Linear(4 * d_model, d_model)
        _init(self, seed)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = q.shape[-1] // self.head_dim  # all heads, or this rank's share under TP
        q, k, v = (t.view(batch, seq, heads, self.head_dim) for t in (q, k, v))
        y = _causal_attention(q, k, v) if self.ulysses is None else self.ulysses(q, k, v, batch_dim_idx=0)
        return self.proj(y.reshape(batch, seq, heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_down(F.gelu(self.mlp_up(self.ln_2(x))))


class Head(nn.Module):
    """Final LayerNorm and output projection (no bias): -> logits."""

    def __init__(self, d_model: int, vocab_size: int, seed: int) -> None:
        super().__init__()
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        _init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


class GPT(nn.Module):
    def __init__(self, n_layers: int, d_model: int, n_heads: int, seq_len: int,
                 vocab_size: int, seed: int = 0,
                 checkpoint: Optional[Callable] = None, sequence_group=None) -> None:
        """checkpoint: None, or a function(block, x) that recomputes the block in backward.
        sequence_group: the Ulysses group; forward then takes this rank's sequence slice."""
        super().__init__()
        self.embedding = Embedding(vocab_size, seq_len, d_model, seed)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, seed + 1 + i, sequence_group)
                                    for i in range(n_layers))
        self.final = Head(d_model, vocab_size, seed + 1 + n_layers)
        self.checkpoint = checkpoint
        self.sequence_rank = 0 if sequence_group is None else torch.distributed.get_rank(sequence_group)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, slice + 1), the whole sequence or this rank's slice of it (see
        `sequence_slice`); returns the mean next-token cross-entropy over the slice."""
        x = self.embedding(tokens[:, :-1], position_offset=self.sequence_rank * (tokens.shape[1] - 1))
        for block in self.blocks:
            x = block(x) if self.checkpoint is None else self.checkpoint(block, x)
        return next_token_loss(self.final(x), tokens[:, 1:])


def pipeline_layers(n_layers: int, d_model: int, n_heads: int, seq_len: int, vocab_size: int,
                    seed: int = 0) -> List:
    """The GPT as DeepSpeed LayerSpecs (built lazily, each on its own pipeline stage)."""
    from deepspeed.pipe import LayerSpec

    return ([LayerSpec(Embedding, vocab_size, seq_len, d_model, seed)]
            + [LayerSpec(Block, d_model, n_heads, seed + 1 + i) for i in range(n_layers)]
            + [LayerSpec(Head, d_model, vocab_size, seed + 1 + n_layers)])


def global_batches(n: int, global_batch: int, seq_len: int, vocab_size: int, seed: int,
                   device: torch.device | str) -> List[torch.Tensor]:
    """`n` global batches of uniformly random tokens, made on the device from `seed`; every rank
    makes the same ones and takes its share (`micro_batch`), so every layout sees the same data."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return [torch.randint(0, vocab_size, (global_batch, seq_len + 1), generator=generator,
                          device=device) for _ in range(n)]


def sequence_slice(batch: torch.Tensor, sp_rank: int, sp_size: int) -> torch.Tensor:
    """Sequence-parallel rank `sp_rank`'s slice of (batch, seq_len + 1) tokens: its seq_len/sp
    inputs and, overlapping the next slice by one token, their targets."""
    length = (batch.shape[1] - 1) // sp_size
    return batch[:, sp_rank * length:(sp_rank + 1) * length + 1]


def micro_batch(batch: torch.Tensor, micro: int, dp_rank: int, dp_size: int,
                micro_size: int) -> torch.Tensor:
    """Data-parallel replica `dp_rank`'s micro-batch number `micro` of a global batch."""
    start = (micro * dp_size + dp_rank) * micro_size
    return batch[start:start + micro_size]
