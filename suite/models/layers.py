"""Torch pieces every family shares: per-parameter initialisation from the parameter's name,
causal attention through scaled_dot_product_attention (grouped-query where the model has fewer
key/value heads; DeepSpeed-Ulysses around it under sequence parallelism) and the loss."""
from __future__ import annotations

import contextlib
import contextvars
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


def initial_weight(seed: int, name: str, shape, std: float) -> torch.Tensor:
    """The initial value of weight `name` ("blocks.3.q_proj.weight"): N(0, std) drawn on the CPU
    from its own stream, whatever device the weight will live on. A CUDA generator draws other
    numbers than a CPU one for the same seed, so drawing on the weight's device would give a
    layout built on the GPU other weights than one built on the CPU (the pipeline builds its
    stages on the CPU); every layout draws here instead and copies the result to its device."""
    generator = torch.Generator(device="cpu").manual_seed(parameter_seed(seed, name))
    return torch.randn(tuple(shape), generator=generator, device="cpu") * std


def init_parameters(module: nn.Module, seed: int, prefix: str, residual_outputs: Iterable[str] = (),
                    n_layers: int = 1) -> None:
    """N(0, 0.02) for every Linear and Embedding weight, each from its own stream named
    `prefix.<name>` (drawn on the CPU: initial_weight), so the plain model, its pipeline stages,
    its ZeRO-3 partitions and its FSDP2 shards all start from the same weights; the projections
    named in `residual_outputs` (those writing into the residual stream) get 0.02 / sqrt(2
    n_layers), as GPT-2 and nanoGPT do. Biases are zero, norm weights one (their constructors'
    defaults). Each Linear and Embedding keeps its stream and std (`INIT_ATTRIBUTE`), so that a
    model built on the meta device under `deferred_initialisation()` draws nothing here and is
    initialised after it is sharded (reset_parameters)."""
    residual_outputs = tuple(residual_outputs)
    for name, sub in module.named_modules():
        if getattr(sub, OWN_STREAM, False):
            continue  # named by its layer already (an expert: by its global index, moe_layer.py)
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            full = f"{prefix}.{name}.weight" if name else f"{prefix}.weight"
            std = INIT_STD / math.sqrt(2 * n_layers) if name.split(".")[-1] in residual_outputs else INIT_STD
            setattr(sub, INIT_ATTRIBUTE, (seed, full, std))
    if _DEFERRED.get():
        return  # reset_parameters initialises the materialised shards from the same streams
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        # Under ZeRO-3's zero.Init each nn.Linear is partitioned as soon as it is built: gather
        # the whole tensors to initialise them (rank 0's values are kept; all ranks agree).
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            _init(module)
    else:
        _init(module)


#: the attribute of each Linear and Embedding that names its weight's stream: (seed, name, std)
INIT_ATTRIBUTE = "suite_init"
#: set on a Linear whose stream its layer named (not after its module path): init_parameters
#: keeps that name (the experts of suite/models/moe_layer.py, named by their global index)
OWN_STREAM = "suite_own_stream"

_DEFERRED: contextvars.ContextVar = contextvars.ContextVar("suite_deferred_init", default=False)


@contextlib.contextmanager
def deferred_initialisation():
    """Modules built inside record their weights' streams but draw nothing (FSDP2 builds the
    model on the meta device and initialises only each rank's shards: reset_parameters)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def _init(module: nn.Module) -> None:
    for sub in module.modules():
        spec = getattr(sub, INIT_ATTRIBUTE, None)
        if spec is None:
            continue
        with torch.no_grad():
            sub.weight.copy_(initial_weight(*spec[:2], sub.weight.shape, spec[2]))
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()


def to_empty(module: nn.Module, device) -> nn.Module:
    """module.to_empty(device=device), keeping shared parameters shared: nn.Module's to_empty
    gives each module holding a tied weight (Llama's tied head) its own new tensor, which would
    untie the head from the embedding (FSDP2's sharded modules keep them shared already)."""
    owners, ties = {}, []
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is None:
                continue
            if id(param) in owners:
                ties.append((sub, name, owners[id(param)]))
            else:
                owners[id(param)] = (sub, name)
    module.to_empty(device=device)
    for sub, name, (owner, owner_name) in ties:
        if getattr(sub, name) is not getattr(owner, owner_name):
            setattr(sub, name, getattr(owner, owner_name))
    return module


def reset_parameters(module: nn.Module, fill=None) -> None:
    """Initialise a model whose storage was made without values (built on the meta device,
    sharded by FSDP2, then `to_empty`), with the values the plain model is built with: every
    Linear and Embedding weight from its own stream (initial_weight, one whole parameter at a
    time on the CPU), biases zero, LayerNorm/RMSNorm weights one. `fill(param, full)` writes the
    whole CPU tensor `full` into `param` (FSDP2: this rank's shard of it; default: copy_). A
    parameter shared by two modules (a tied head) keeps the value of the first, as in the plain
    model, where tying replaces the head's weight by the embedding's. Buffers have no value
    after to_empty: a module that registers one must recompute it in its own `reset_buffers()`;
    one without it is refused here, naming it."""
    fill = fill or (lambda param, full: param.copy_(full))
    done = set()

    def write(param: torch.Tensor, full: torch.Tensor) -> None:
        if id(param) not in done:
            done.add(id(param))
            fill(param, full)

    with torch.no_grad():
        for name, sub in module.named_modules():
            spec = getattr(sub, INIT_ATTRIBUTE, None)
            if spec is not None:
                write(sub.weight, initial_weight(*spec[:2], sub.weight.shape, spec[2]))
            elif isinstance(sub, (nn.LayerNorm, nn.RMSNorm)) and sub.weight is not None:
                write(sub.weight, torch.ones(sub.weight.shape))
            for pname, param in sub.named_parameters(recurse=False):
                if pname == "bias":
                    write(param, torch.zeros(param.shape))
                elif id(param) not in done:
                    raise ValueError(f"reset_parameters: {name}.{pname} has no initialisation rule")
            if dict(sub.named_buffers(recurse=False)):
                if not hasattr(sub, "reset_buffers"):
                    raise ValueError(f"reset_parameters: {name or type(sub).__name__} has buffers "
                                     "but no reset_buffers() to recompute them after to_empty")
                sub.reset_buffers()


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
        from suite.models.moe_layer import moe_layers

        # mixture of experts (suite/models/moe_layer.py): a plain list, not submodules again
        self._moe_layers = moe_layers(self.blocks)
        #: each forward pass's routing figures, (layers, n_experts + 2) (moe_layer.route_counts)
        self.routing_log: list = []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens[:, :-1])
        for block in self.blocks:
            x = block(x) if self.checkpoint is None else self.checkpoint(block, x)
        loss = next_token_loss(self.final(x), tokens[:, 1:])
        if self._moe_layers:  # + the routers' load-balancing losses (each times its coefficient)
            from suite.models.moe_layer import collect

            aux, routing = collect(self._moe_layers)
            self.routing_log.append(routing)
            loss = loss + aux
        return loss
