"""Every layout starts from the same weights, whatever device it builds on: each initial weight
is drawn on the CPU from its own stream and copied to the weight's device (a CUDA generator
draws other numbers than a CPU one for the same seed: the pipeline, built on the CPU, started
from other weights than ddp, built on the GPU). And FSDP2 builds its model on the meta device,
shards it there and materialises only each rank's shards, initialised from the same streams
(docs/layouts.md, docs/memory.md)."""
import os
import socket

import pytest
import torch
import yaml
from torch import nn

from suite import models
from suite.config import ClusterConfig, ModelConfig, StrategyConfig, SuiteConfig, TrainConfig
from suite.models import layers

from conftest import REPO


def preset(name: str, **changes) -> ModelConfig:
    fields = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
    fields.pop("defaults")
    return ModelConfig(**{**fields, **changes})


@pytest.fixture
def generators(monkeypatch):
    """The device of every torch.Generator made and of every tensor torch.randn draws."""
    made, drawn = [], []
    real_randn = torch.randn

    class Generator(torch.Generator):  # a subclass: torch's own annotations still work
        def __new__(cls, device="cpu"):
            made.append(torch.device(device).type)
            return super().__new__(cls, device=device)

    def randn(*args, generator=None, device=None, **kwargs):
        drawn.append((torch.device(device).type if device is not None else "default",
                      None if generator is None else generator.device.type))
        return real_randn(*args, generator=generator, device=device, **kwargs)

    monkeypatch.setattr(torch, "Generator", Generator)
    monkeypatch.setattr(torch, "randn", randn)
    return made, drawn


@pytest.mark.parametrize("name", ["tiny", "llama_tiny"])
def test_a_model_on_another_device_draws_its_weights_on_the_cpu(generators, name):
    # the meta device stands for the GPU here: the weights are not on the CPU, and before the
    # fix the generator was made on the weight's device (which meta refuses outright)
    m = preset(name)
    with torch.device("meta"):
        model = models.family(m.family).build(m, 0)
    assert all(p.is_meta for p in model.parameters())
    made, drawn = generators
    weights = [sub for sub in model.modules() if isinstance(sub, (nn.Linear, nn.Embedding))]
    assert made == ["cpu"] * len(weights)  # one stream per weight, every one on the CPU
    assert drawn == [("cpu", "cpu")] * len(weights)


# the plain model's weights on the CPU as they were before the fix (computed then): the CPU
# parity results stay as they are
BEFORE = {
    "tiny": (374.7682412311019, "blocks.1.mlp_down.weight",
             [-0.0005527536850422621, 0.000675393093843013, -0.005807394161820412],
             "embedding.token_embedding.weight", [-0.00640446599572897, -0.0060148537158966064]),
    "llama_tiny": (375.58211214535226, "blocks.1.down_proj.weight",
                   [0.02045588195323944, -0.019658811390399933, -0.008941334672272205],
                   "embedding.tokens.weight", [0.0024058539420366287, -0.0004656002565752715]),
}


@pytest.mark.parametrize("name", ["tiny", "llama_tiny"])
def test_the_cpu_weights_are_unchanged(name):
    m = preset(name)
    model = models.family(m.family).build(m, 0)
    squares, residual, first, embedding, head = BEFORE[name]
    params = dict(model.named_parameters())
    with torch.no_grad():
        assert sum(float((p.double() ** 2).sum()) for p in model.parameters()) == pytest.approx(squares, rel=1e-12)
        assert params[residual].flatten()[:3].tolist() == first
        assert params[embedding].flatten()[:2].tolist() == head


@pytest.mark.parametrize("name", ["tiny", "llama_tiny"])
def test_reset_parameters_gives_the_plain_models_values(name):
    m = preset(name, tie_embeddings=name == "llama_tiny")
    plain = models.family(m.family).build(m, 3)
    with torch.device("meta"), layers.deferred_initialisation():
        deferred = models.family(m.family).build(m, 3)
    layers.to_empty(deferred, "cpu")  # keeps the tied head tied (nn.Module's to_empty does not)
    layers.reset_parameters(deferred)
    mine, theirs = dict(deferred.named_parameters()), dict(plain.named_parameters())
    assert mine.keys() == theirs.keys()
    for name_, p in theirs.items():
        assert torch.equal(mine[name_], p), name_
    if m.tie_embeddings:  # one tensor, with the embedding's values, as in the plain model
        assert deferred.final.output.weight is deferred.embedding.tokens.weight


def test_a_buffer_without_a_way_to_recompute_it_is_refused():
    # to_empty leaves buffers without values (a rotary table would be garbage): a module that
    # registers one must say how to recompute it
    class Rotary(nn.Module):
        def __init__(self, with_reset):
            super().__init__()
            self.register_buffer("angles", torch.arange(4.0))
            if with_reset:
                self.reset_buffers = lambda: self.angles.copy_(torch.arange(4.0))

    with pytest.raises(ValueError, match="has buffers but no reset_buffers"):
        layers.reset_parameters(Rotary(False))
    module = Rotary(True).to_empty(device="cpu")
    layers.reset_parameters(module)
    assert module.angles.tolist() == [0.0, 1.0, 2.0, 3.0]
    # the suite's models keep none (positions and RoPE's angles are computed in forward)
    for name in ("tiny", "llama_tiny"):
        m = preset(name)
        assert not list(models.family(m.family).build(m, 0).buffers())


# --- FSDP2: built on the meta device, each rank materialises its shards only ----------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp2_rank(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from suite.plan import plan_run
    from suite.workload import torch_engine

    wrapped = []
    real_wrap = torch_engine._wrap

    def wrap(model, *args):
        # what fully_shard is given: no storage yet, on any rank
        wrapped.append({n: p.device.type for n, p in model.named_parameters()})
        return real_wrap(model, *args)

    torch_engine._wrap = wrap
    try:
        for m in (preset("tiny"), preset("llama_tiny", tie_embeddings=True)):
            cfg = SuiteConfig(model=m, strategy=StrategyConfig(name="fsdp2", engine="fsdp2", zero_stage=3),
                              cluster=ClusterConfig(accelerator="cpu", cpu_ranks=world),
                              train=TrainConfig(micro_batch_size=1, seed=5))
            engine = torch_engine.build(cfg, plan_run(cfg, check_memory=False), None)
            assert set(wrapped.pop().values()) == {"meta"}, m.name
            plain = dict(models.family(m.family).build(m, 5).named_parameters())
            sharded = dict(engine.module.named_parameters())
            assert sharded.keys() == plain.keys()
            for name, param in sharded.items():
                full = plain[name]
                # this rank's shard only: dim 0 split over the ranks (torch.chunk's sizes)
                mine = torch.chunk(full, world, dim=0)[rank]
                assert tuple(param.to_local().shape) == tuple(mine.shape), name
                assert param.to_local().numel() < full.numel(), name
                assert torch.equal(param.to_local(), mine), name  # the plain model's values
                assert torch.equal(param.full_tensor(), full), name
            if m.tie_embeddings:
                assert engine.module.final.output.weight is engine.module.embedding.tokens.weight
    finally:
        torch_engine._wrap = real_wrap
        torch.distributed.destroy_process_group()


def test_fsdp2_builds_on_meta_and_each_rank_holds_its_shards_of_the_plain_weights():
    import torch.multiprocessing as mp

    mp.spawn(_fsdp2_rank, args=(2, _free_port()), nprocs=2, join=True)
