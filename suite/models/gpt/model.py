"""The GPT's torch modules, in the nanoGPT mould. The same layers build the plain model and its
pipeline form, and each parameter is initialised from its own name (suite.models.layers), so
every parallel layout starts from identical weights (what the loss-parity check relies on).
Attention takes its head count from the projection it holds, so it also runs on a
tensor-parallel shard of the heads (DeepSpeed AutoTP)."""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from suite.models import moe
from suite.models.gpt import ffn_dim
from suite.models.layers import Attend, Decoder, init_parameters, sequence_rank

RESIDUAL_OUTPUTS = ("proj", "mlp_down")


class Embedding(nn.Module):
    """Token + position embedding: (batch, seq) token ids -> (batch, seq, d_model)."""

    def __init__(self, m: Any, seed: int, prefix: str = "embedding", sequence_group=None) -> None:
        """sequence_group: the Ulysses group; inputs are then this rank's slice of the sequence."""
        super().__init__()
        self.token_embedding = nn.Embedding(m.vocab_size, m.d_model)
        self.position_embedding = nn.Embedding(m.seq_len, m.d_model)
        self.sequence_rank = sequence_rank(sequence_group)
        init_parameters(self, seed, prefix)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        start = self.sequence_rank * inputs.shape[1]  # where this slice starts in the sequence
        positions = torch.arange(start, start + inputs.shape[1], device=inputs.device)
        return self.token_embedding(inputs) + self.position_embedding(positions)


class Block(nn.Module):
    def __init__(self, m: Any, seed: int, prefix: str, sequence_group=None, expert_parallel: int = 1) -> None:
        """sequence_group: the Ulysses process group when the sequence is split across ranks;
        expert_parallel: DeepSpeed-MoE's ep_size (a mixture of experts: model.n_experts > 1)."""
        super().__init__()
        d = m.d_model
        self.head_dim = d // m.n_heads
        self.attend = Attend(sequence_group)
        self.ln_1 = nn.LayerNorm(d, eps=m.norm_eps)
        self.qkv = nn.Linear(d, 3 * d)  # [Q; K; V] along the output dim
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=m.norm_eps)
        if moe.is_moe(m):
            from suite.models.moe_layer import MoEMLP

            self.moe = MoEMLP(m, seed, f"{prefix}.moe", moe.expert_ffn_dim(m, ffn_dim(m)), expert_parallel)
        else:
            self.mlp_up = nn.Linear(d, ffn_dim(m))
            self.mlp_down = nn.Linear(ffn_dim(m), d)
        init_parameters(self, seed, prefix, RESIDUAL_OUTPUTS, m.n_layers)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = q.shape[-1] // self.head_dim  # all heads, or this rank's share under TP
        q, k, v = (t.view(batch, seq, heads, self.head_dim) for t in (q, k, v))
        return self.proj(self.attend(q, k, v).reshape(batch, seq, heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        if hasattr(self, "moe"):
            return x + self.moe(self.ln_2(x))
        return x + self.mlp_down(F.gelu(self.mlp_up(self.ln_2(x))))


class Head(nn.Module):
    """Final LayerNorm and output projection (no bias): -> logits."""

    def __init__(self, m: Any, seed: int, prefix: str = "final") -> None:
        super().__init__()
        self.ln_f = nn.LayerNorm(m.d_model, eps=m.norm_eps)
        self.head = nn.Linear(m.d_model, m.vocab_size, bias=False)
        init_parameters(self, seed, prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x))


def gpt(m: Any, seed: int = 0, checkpoint: Optional[Callable] = None, sequence_group=None,
        expert_parallel: int = 1) -> Decoder:
    """sequence_group: the Ulysses group; the model then takes this rank's sequence slice.
    expert_parallel: DeepSpeed-MoE's ep_size, for a mixture of experts."""
    return Decoder(Embedding(m, seed, sequence_group=sequence_group),
                   (Block(m, seed, f"blocks.{i}", sequence_group, expert_parallel) for i in range(m.n_layers)),
                   Head(m, seed), checkpoint)


def pipeline_layers(m: Any, seed: int = 0) -> List:
    """The GPT as DeepSpeed LayerSpecs (built lazily, each on its own pipeline stage)."""
    from deepspeed.pipe import LayerSpec

    return ([LayerSpec(Embedding, m, seed)]
            + [LayerSpec(Block, m, seed, f"blocks.{i}") for i in range(m.n_layers)]
            + [LayerSpec(Head, m, seed)])
