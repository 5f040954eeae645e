"""The Llama family's torch modules. Separate q/k/v and gate/up/down projections (so AutoTP
splits each by heads or by the MLP's hidden size), rotary positions applied to q and k before
attention (under Ulysses with this rank's offset into the sequence), grouped-query attention
through SDPA. Each parameter is initialised from its own name (suite.models.layers), so every
parallel layout starts from identical weights."""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from suite.models import head_dim, moe
from suite.models.layers import Attend, Decoder, init_parameters, sequence_rank
from suite.models.llama import ffn_dim, kv_heads

RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of (batch, seq, heads, head_dim) at `positions` (seq,): each
    pair (i, i + head_dim/2) turns by position x theta^(-2i/head_dim), computed in fp32."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * frequencies[None, :]  # (seq, half)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class Embedding(nn.Module):
    """Token table: (batch, seq) token ids -> (batch, seq, d_model); positions are rotary."""

    def __init__(self, m: Any, seed: int, prefix: str = "embedding") -> None:
        super().__init__()
        self.tokens = nn.Embedding(m.vocab_size, m.d_model)
        init_parameters(self, seed, prefix)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.tokens(inputs)


class Block(nn.Module):
    def __init__(self, m: Any, seed: int, prefix: str, sequence_group=None, expert_parallel: int = 1) -> None:
        """expert_parallel: DeepSpeed-MoE's ep_size (a mixture of experts: model.n_experts > 1)."""
        super().__init__()
        d, self.head_dim, self.theta = m.d_model, head_dim(m), m.rope_theta
        self.sequence_rank = sequence_rank(sequence_group)
        self.attend = Attend(sequence_group)
        self.attention_norm = nn.RMSNorm(d, eps=m.norm_eps)
        self.q_proj = nn.Linear(d, m.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv_heads(m) * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads(m) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(m.n_heads * self.head_dim, d, bias=False)
        if m.qk_norm:  # Qwen3: RMSNorm over each head's dimensions, before the rotation
            self.q_norm = nn.RMSNorm(self.head_dim, eps=m.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=m.norm_eps)
        self.mlp_norm = nn.RMSNorm(d, eps=m.norm_eps)
        if moe.is_moe(m):
            from suite.models.moe_layer import MoEMLP

            self.moe = MoEMLP(m, seed, f"{prefix}.moe", moe.expert_ffn_dim(m, ffn_dim(m)), expert_parallel)
        else:
            self.gate_proj = nn.Linear(d, ffn_dim(m), bias=False)
            self.up_proj = nn.Linear(d, ffn_dim(m), bias=False)
            self.down_proj = nn.Linear(ffn_dim(m), d, bias=False)
        init_parameters(self, seed, prefix, RESIDUAL_OUTPUTS, m.n_layers)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # head counts from the projections: all heads, or this rank's share under TP
        q = self.q_proj(x).view(batch, seq, -1, self.head_dim)
        k = self.k_proj(x).view(batch, seq, -1, self.head_dim)
        v = self.v_proj(x).view(batch, seq, -1, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        start = self.sequence_rank * seq  # this slice's place in the sequence (Ulysses)
        positions = torch.arange(start, start + seq, device=x.device)
        q, k = rotate(q, positions, self.theta), rotate(k, positions, self.theta)
        return self.o_proj(self.attend(q, k, v).reshape(batch, seq, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        h = self.mlp_norm(x)
        if hasattr(self, "moe"):
            return x + self.moe(h)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Head(nn.Module):
    """Final RMSNorm and output projection: -> logits."""

    def __init__(self, m: Any, seed: int, prefix: str = "final") -> None:
        super().__init__()
        self.norm = nn.RMSNorm(m.d_model, eps=m.norm_eps)
        self.output = nn.Linear(m.d_model, m.vocab_size, bias=False)
        init_parameters(self, seed, prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(x))


def llama(m: Any, seed: int = 0, checkpoint: Optional[Callable] = None, sequence_group=None,
          expert_parallel: int = 1) -> Decoder:
    """sequence_group: the Ulysses group; the model then takes this rank's sequence slice.
    expert_parallel: DeepSpeed-MoE's ep_size, for a mixture of experts."""
    model = Decoder(Embedding(m, seed), (Block(m, seed, f"blocks.{i}", sequence_group, expert_parallel)
                                         for i in range(m.n_layers)),
                    Head(m, seed), checkpoint)
    if m.tie_embeddings:  # one tensor, registered in both modules (ZeRO-3 gathers it for each)
        model.final.output.weight = model.embedding.tokens.weight
    return model


def pipeline_layers(m: Any, seed: int = 0) -> List:
    """The model as DeepSpeed LayerSpecs (untied head: tied ones are refused with pipelines)."""
    from deepspeed.pipe import LayerSpec

    return ([LayerSpec(Embedding, m, seed)]
            + [LayerSpec(Block, m, seed, f"blocks.{i}") for i in range(m.n_layers)]
            + [LayerSpec(Head, m, seed)])
