"""The mixture-of-experts MLP's torch modules (suite/models/moe.py is the pure part): SwiGLU
experts behind DeepSpeed-MoE's router (`deepspeed.moe.layer.MoE`), optional shared experts, the
router's load-balancing loss, and per-layer routing figures (share of routes dropped, expert
load) for the run's record.

Initialisation: each expert's weights come from its own stream named by its GLOBAL index
(`blocks.3.moe.experts.5.gate_proj.weight`), whatever rank holds it: under expert parallelism
rank r of an expert group holds global experts r * n_local ... (r + 1) * n_local - 1
(DeepSpeed's expert groups are consecutive ranks and its all-to-all sends expert slot e to rank
e // n_local), so expert parallel degree 2 starts from the same global experts as degree 1."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List

import torch
import torch.nn.functional as F
from torch import nn

from suite.models.layers import INIT_ATTRIBUTE, INIT_STD, OWN_STREAM

#: the weight writing into the residual stream (0.02 / sqrt(2 n_layers), as the dense MLP's)
RESIDUAL_OUTPUT = "down_proj"


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases: one expert, or the shared experts together."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def expert_parallel_rank(expert_parallel: int) -> int:
    """This rank's place in its expert group: DeepSpeed's groups are consecutive ranks
    (utils/groups.py, _create_expert_and_data_parallel without use_data_before_expert_parallel_)."""
    if expert_parallel == 1 or not torch.distributed.is_initialized():
        return 0
    return torch.distributed.get_rank() % expert_parallel


def _name_stream(linear: nn.Linear, seed: int, name: str, std: float) -> None:
    setattr(linear, INIT_ATTRIBUTE, (seed, name, std))
    setattr(linear, OWN_STREAM, True)  # init_parameters keeps this name, not the module path


def route_counts(gate_output) -> torch.Tensor:
    """One gate call's figures from DeepSpeed's sparse-route gate output (l_aux, capacity,
    n_experts, indices, locations, gates, exp_counts): [routes chosen per expert..., routes kept,
    l_aux] as one float vector (length n_experts + 2). exp_counts counts every route the router
    chose (before the capacity limit); a route evicted by the limit has expert index -1."""
    l_aux, indices, exp_counts = gate_output[0], gate_output[3], gate_output[-1]
    kept = (indices >= 0).sum()
    return torch.cat([exp_counts.detach().float(), kept.float().reshape(1),
                      l_aux.detach().float().reshape(1)])


def routing_summary(counts: torch.Tensor, ranks: int = 1) -> Dict[str, float]:
    """The run's routing figures from route_counts vectors, summed over ranks, stacked as
    (micro-batches, layers, n_experts + 2) (l_aux summed over ranks too):
    - moe_dropped_fraction: routes evicted by the capacity limit / routes chosen, over all;
    - moe_expert_load: the busiest expert's routes over the mean expert's, per layer and
      micro-batch, averaged (1.0 = balanced; n_experts / k = every token to the same k);
    - moe_expert_load_max: the largest of those;
    - moe_aux_loss: the router's load-balancing loss per layer (before model.aux_loss_coef),
      averaged over layers, micro-batches and ranks (`ranks`: divide the summed l_aux)."""
    per_expert, kept = counts[..., :-2].double(), counts[..., -2].double()
    routed = per_expert.sum(-1)
    load = per_expert.max(-1).values / per_expert.mean(-1).clamp(min=1e-12)
    return {"moe_dropped_fraction": float(1.0 - kept.sum() / routed.sum().clamp(min=1e-12)),
            "moe_expert_load": float(load.mean()), "moe_expert_load_max": float(load.max()),
            "moe_aux_loss": float(counts[..., -1].double().mean() / ranks)}


class MoEMLP(nn.Module):
    """The block's MLP as DeepSpeed-MoE: `forward(h)` returns the routed (+ shared) output and
    keeps this call's load-balancing loss (`aux_loss`, with its gradient) and routing figures
    (`routing`, route_counts) for the Decoder to collect."""

    def __init__(self, m: Any, seed: int, prefix: str, ffn_dim: int, expert_parallel: int = 1) -> None:
        super().__init__()
        from deepspeed.moe.layer import MoE

        d, E = m.d_model, m.n_experts
        self.aux_loss_coef = m.aux_loss_coef
        deterministic = m.deterministic_routing
        self.routed = MoE(hidden_size=d, expert=SwiGLU(d, ffn_dim), num_experts=E, ep_size=expert_parallel,
                       k=m.experts_per_token, capacity_factor=m.capacity_factor,
                       eval_capacity_factor=m.capacity_factor, drop_tokens=m.drop_tokens,
                       use_rts=not deterministic, top2_2nd_expert_sampling=not deterministic)
        self.shared = SwiGLU(d, m.n_shared_experts * ffn_dim) if m.n_shared_experts else None
        residual = INIT_STD / math.sqrt(2 * m.n_layers)
        _name_stream(self.routed.deepspeed_moe.gate.wg, seed, f"{prefix}.router.weight", INIT_STD)
        local = self.routed.num_local_experts
        first = expert_parallel_rank(expert_parallel) * local
        for j, expert in enumerate(self.routed.deepspeed_moe.experts.deepspeed_experts):
            for name, linear in expert.named_children():
                _name_stream(linear, seed, f"{prefix}.experts.{first + j}.{name}.weight",
                             residual if name == RESIDUAL_OUTPUT else INIT_STD)
        if self.shared is not None:
            for name, linear in self.shared.named_children():
                _name_stream(linear, seed, f"{prefix}.shared_experts.{name}.weight",
                             residual if name == RESIDUAL_OUTPUT else INIT_STD)
        self.aux_loss = None
        self.routing = None
        self.routed.deepspeed_moe.gate.register_forward_hook(self._record)

    def _record(self, _gate, _inputs, output) -> None:
        self.routing = route_counts(output)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out, self.aux_loss, _ = self.routed(h)
        if self.shared is not None:
            out = out + self.shared(h)
        return out


def moe_layers(module: nn.Module) -> List[MoEMLP]:
    return [sub for sub in module.modules() if isinstance(sub, MoEMLP)]


def collect(layers: Iterable[MoEMLP]):
    """After a forward pass: (sum over layers of aux_loss_coef x load-balancing loss, with its
    gradient; the layers' routing figures stacked, (layers, n_experts + 2)). Read right after
    the blocks ran: recomputation in backward (activation checkpointing) overwrites them."""
    layers = list(layers)
    aux = sum(layer.aux_loss_coef * layer.aux_loss for layer in layers)
    return aux, torch.stack([layer.routing for layer in layers])
