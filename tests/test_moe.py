"""Mixture of experts (suite/models/moe.py, moe_layer.py): total and active parameter counts of
every MoE preset against hand-computed values, FLOPs per token from the active count, the
built model's count, experts initialised from their global index (expert parallel 2 starts from
expert parallel 1's experts), routing figures on a router whose choices the test fixes, the
layout refusals, and loss parity of expert parallel 2 against 1 on 2 CPU ranks under ZeRO-2
with token dropping on and off (a real sweep)."""
import dataclasses
import json

import pytest
import torch

from conftest import run_sweep, sweep_dirs
from suite import models
from suite.config import ConfigError, ModelConfig
from test_models import preset

MOE_PRESETS = ("moe_tiny", "mixtral_8x7b", "qwen3_30b_a3b")


# --- counts --------------------------------------------------------------------------------

def test_mixtral_8x7b_has_its_published_parameter_count():
    # embedding and untied head 32,000*4,096 = 131,072,000 each; per block: q and o 4,096^2 =
    # 16,777,216 each, k and v 4,096*1,024 = 4,194,304 each -> attention 41,943,040; two norms
    # 8,192; router 4,096*8 = 32,768 (no bias); experts 8 * 3*4,096*14,336 = 8 * 176,160,768 =
    # 1,409,286,144 -> 1,451,270,144 per block; x 32 = 46,440,644,608; + final norm 4,096
    m = preset("mixtral_8x7b")
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.n_experts, m.experts_per_token,
            m.moe_ffn_dim, m.vocab_size, m.tie_embeddings, m.n_shared_experts) == (
        32, 4096, 32, 8, 8, 2, 14336, 32000, False, 0)
    total = 2 * 131_072_000 + 32 * (41_943_040 + 8_192 + 32_768 + 8 * 176_160_768) + 4_096
    assert total == 46_702_792_704
    # active: the router and 2 of the 8 experts per block: 41,943,040 + 8,192 + 32,768 +
    # 2*176,160,768 = 394,305,536; x 32 = 12,617,777,152; + embedding, head, final norm
    active = 2 * 131_072_000 + 32 * (41_943_040 + 8_192 + 32_768 + 2 * 176_160_768) + 4_096
    assert active == 12_879_925_248
    assert models.param_count(m) == {
        "total": total, "embedding": 131_072_000, "non_embedding": total - 131_072_000,
        "active": active, "active_non_embedding": active - 131_072_000}


def test_qwen3_30b_a3b_has_its_published_parameter_count():
    # 32 query heads of 128 = 4,096 (not d_model), 4 kv heads of 128 = 512: q and o
    # 2,048*4,096 = 8,388,608 each, k and v 2,048*512 = 1,048,576 each -> 18,874,368; q_norm and
    # k_norm 128 each; two norms 4,096; router 2,048*128 = 262,144; experts 128 * 3*2,048*768 =
    # 128 * 4,718,592 = 603,979,776 -> 623,120,640 per block; x 48 = 29,909,790,720; embedding
    # and untied head 151,936*2,048 = 311,164,928 each; final norm 2,048
    m = preset("qwen3_30b_a3b")
    assert (m.n_layers, m.d_model, m.n_heads, m.head_dim, m.n_kv_heads, m.qk_norm, m.n_experts,
            m.experts_per_token, m.moe_ffn_dim, m.vocab_size, m.tie_embeddings) == (
        48, 2048, 32, 128, 4, True, 128, 8, 768, 151936, False)
    per_block = 18_874_368 + 256 + 4_096 + 262_144
    total = 2 * 311_164_928 + 48 * (per_block + 128 * 4_718_592) + 2_048
    active = 2 * 311_164_928 + 48 * (per_block + 8 * 4_718_592) + 2_048
    assert (total, active) == (30_532_122_624, 3_353_032_704)  # published: 30.5B, 3.3B activated
    counts = models.param_count(m)
    assert (counts["total"], counts["active"]) == (total, active)
    assert counts["active_non_embedding"] == active - 311_164_928


def test_the_tiny_moe_counts_its_shared_expert_in_total_and_active():
    # per block: q and o 64^2 = 4,096 each, k and v 64*32 = 2,048 each, norms 128 -> 12,416;
    # router 64*4 = 256; 4 experts of 3*64*128 = 24,576; 1 shared expert 24,576
    m = preset("moe_tiny")
    total = 2 * 32_768 + 64 + 2 * (12_416 + 256 + 4 * 24_576 + 24_576)
    active = 2 * 32_768 + 64 + 2 * (12_416 + 256 + 2 * 24_576 + 24_576)
    assert (total, active) == (336_704, 238_400)
    counts = models.param_count(m)
    assert (counts["total"], counts["active"], counts["active_non_embedding"]) == (total, active, active - 32_768)


def test_parameters_per_rank_under_expert_parallelism():
    from suite.models import moe

    # Mixtral: experts 32 blocks x 8 x 176,160,768 = 45,097,156,608; the rest 1,605,636,096
    assert moe.params_per_rank(preset("mixtral_8x7b"), 1) == {"dense": 1_605_636_096,
                                                              "expert": 45_097_156_608}
    assert moe.params_per_rank(preset("mixtral_8x7b"), 8)["expert"] == 45_097_156_608 // 8
    # the tiny MoE: 2 blocks x 4 experts x 24,576 = 196,608; its shared expert is dense
    assert moe.params_per_rank(preset("moe_tiny"), 2) == {"dense": 336_704 - 196_608, "expert": 98_304}
    assert moe.params_per_rank(preset("llama_tiny"), 1) == {"dense": 164_160, "expert": 0}


def test_flops_per_token_of_an_moe_count_the_active_parameters():
    m = preset("moe_tiny")
    # 6 * active non-embedding 205,632 = 1,233,792; attention 12 * 2 layers * 4 heads * 16 * 32
    # tokens = 49,152 (causal: 24,576)
    assert models.flops_per_token(m) == 1_233_792 + 49_152
    assert models.flops_per_token(m, causal=True) == 1_233_792 + 24_576
    # Qwen3: head_dim 128, not 2,048 / 32 = 64: 6 * 3,041,867,776 + 12 * 48 * 32 * 128 * 4,096
    q = preset("qwen3_30b_a3b")
    assert models.flops_per_token(q) == 6 * 3_041_867_776 + 12 * 48 * 32 * 128 * 4_096


def test_the_dry_run_line_gives_total_and_active_parameters():
    assert models.describe(preset("mixtral_8x7b")).startswith(
        "mixtral_8x7b (llama): 46,702,792,704 parameters (12,879,925,248 active per token), ")


@pytest.mark.parametrize("m", [
    preset("moe_tiny"),
    # qk_norm and a head_dim other than d_model / n_heads, top-1, no shared experts
    ModelConfig(name="t", family="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=24,
                qk_norm=True, n_experts=4, experts_per_token=1, moe_ffn_dim=96, vocab_size=256),
    # the gpt family's blocks with SwiGLU experts, 2 shared, top-3
    ModelConfig(name="g", family="gpt", n_layers=2, d_model=64, n_heads=4, n_experts=4,
                experts_per_token=3, moe_ffn_dim=32, n_shared_experts=2, vocab_size=256),
], ids=["moe_tiny", "llama-qk-norm-head-dim", "gpt"])
def test_param_count_matches_the_built_moe_model(m):
    net = models.family(m.family).build(m, seed=0)
    assert sum(p.numel() for p in net.parameters()) == models.param_count(m)["total"]
    tokens = torch.randint(0, m.vocab_size, (2, m.seq_len + 1), generator=torch.Generator().manual_seed(0))
    loss = net(tokens)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())  # the router too (its aux loss)
    assert len(net.routing_log) == 1 and net.routing_log[0].shape == (m.n_layers, m.n_experts + 2)


def test_experts_start_from_their_global_index_under_expert_parallelism(monkeypatch):
    """Rank 1 of an expert group of 2 holds global experts 2 and 3: their weights equal
    expert parallel 1's experts 2 and 3; everything else equals the whole model's."""
    import suite.models.moe_layer as moe_layer

    m = preset("moe_tiny")
    whole = dict(models.family("llama").build(m, seed=5).named_parameters())
    monkeypatch.setattr(moe_layer, "expert_parallel_rank", lambda ep: 1)
    half = dict(models.family("llama").build(m, seed=5, expert_parallel=2).named_parameters())
    experts = ".moe.routed.deepspeed_moe.experts.deepspeed_experts."
    for name, p in half.items():
        if experts in name:
            head, tail = name.split(experts)
            local, rest = tail.split(".", 1)
            assert torch.equal(p, whole[f"{head}{experts}{int(local) + 2}.{rest}"]), name
        else:
            assert torch.equal(p, whole[name]), name
    assert sum(experts in n for n in half) == 2 * 3 * m.n_layers  # 2 local experts x 3 weights
    from suite.models import moe

    assert sum(p.numel() for p in half.values()) == sum(moe.params_per_rank(m, 2).values())
    # the streams are the global experts' own: no two experts (nor the shared one) alike
    a, b = (whole[f"blocks.0{experts}{i}.gate_proj.weight"] for i in (0, 1))
    assert not torch.equal(a, b) and not torch.equal(a, whole["blocks.0.moe.shared.gate_proj.weight"])


# --- routing figures -----------------------------------------------------------------------

def test_dropped_share_and_expert_load_on_a_router_whose_choices_are_fixed():
    """8 tokens, 4 experts, top-2, capacity factor 1: capacity = ceil(8 / 4 * 1 * 2) = 4 routes
    per expert. The router's weights send every token first to expert 0 and second to expert 1:
    16 routes, 8 to each; 4 of each are kept, so 8 of 16 routes (0.5) are dropped; the busiest
    expert has 8 routes against a mean of 16 / 4 = 4: load 2.0."""
    from deepspeed.moe.sharded_moe import TopKGate
    from suite.models.moe_layer import route_counts, routing_summary

    gate = TopKGate(4, 4, k=2, capacity_factor=1.0, min_capacity=4, drop_tokens=True, use_rts=False,
                    top2_2nd_expert_sampling=False)
    with torch.no_grad():
        gate.wg.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [2.0, 0, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 0, 0]]))
    tokens = torch.ones(8, 4)
    counts = route_counts(gate(tokens, None, True))  # as DeepSpeed's MOELayer calls it
    assert counts[:4].tolist() == [8, 8, 0, 0] and counts[4].item() == 8
    summary = routing_summary(counts.reshape(1, 1, -1))
    assert summary["moe_dropped_fraction"] == 0.5
    assert summary["moe_expert_load"] == summary["moe_expert_load_max"] == 2.0
    # no dropping: capacity becomes the busiest expert's 8 routes, nothing is dropped
    dropless = TopKGate(4, 4, k=2, drop_tokens=False, use_rts=False, top2_2nd_expert_sampling=False)
    dropless.wg.weight.data.copy_(gate.wg.weight)
    assert routing_summary(route_counts(dropless(tokens, None, True)).reshape(1, 1, -1))[
        "moe_dropped_fraction"] == 0.0
    # a balanced router: the tokens' choices are (0, 1), (2, 3), (0, 1), (2, 3), ...: 4 routes
    # each, load 1.0; two layers and two ranks summed, the aux loss averaged per layer
    balanced = torch.tensor([4.0, 4, 4, 4, 16, 1.0])
    two = torch.stack([torch.stack([balanced, counts])]) * 2  # (1 micro-batch, 2 layers), 2 ranks
    summary = routing_summary(two, ranks=2)
    assert summary["moe_expert_load"] == (1.0 + 2.0) / 2 and summary["moe_expert_load_max"] == 2.0
    assert summary["moe_dropped_fraction"] == 1 - (16 + 8) / (16 + 16)
    assert summary["moe_aux_loss"] == pytest.approx((1.0 + counts[5].item()) / 2)


def test_the_aux_loss_is_added_to_the_training_loss_with_its_coefficient():
    m = preset("moe_tiny")
    tokens = torch.randint(0, m.vocab_size, (2, m.seq_len + 1), generator=torch.Generator().manual_seed(0))
    losses = {}
    for coef in (0.0, 1.0):
        net = models.family("llama").build(dataclasses.replace(m, aux_loss_coef=coef), seed=0)
        with torch.no_grad():
            losses[coef] = net(tokens).item()
        aux = net.routing_log[-1][:, -1].sum().item()  # l_aux summed over the layers
    assert losses[1.0] - losses[0.0] == pytest.approx(aux, rel=1e-5)


# --- refusals ------------------------------------------------------------------------------

def test_moe_shapes_and_layouts_that_cannot_run_are_refused():
    from suite.models import moe

    with pytest.raises(ConfigError, match="model.experts_per_token=5 must be at most model.n_experts=4"):
        dataclasses.replace(preset("moe_tiny"), experts_per_token=5)
    with pytest.raises(ConfigError, match="apply to a mixture of experts only"):
        ModelConfig(family="llama", n_shared_experts=1)
    with pytest.raises(ConfigError, match="the gpt family's heads"):
        ModelConfig(head_dim=32)
    m = preset("moe_tiny")
    moe.check_layout(m, expert_parallel=2, data_parallel=2, zero_stage=2)
    for kwargs, match in (({"expert_parallel": 3, "data_parallel": 3}, "n_experts=4 must be divisible"),
                          ({"expert_parallel": 4, "data_parallel": 2}, "must divide the data-parallel size 2"),
                          ({"zero_stage": 3}, "ZeRO-3"), ({"pipeline_parallel": 2}, "pipeline_parallel=2"),
                          ({"engine": "fsdp2"}, "engine=fsdp2"),
                          ({"activation_checkpointing": "cpu"}, "no gradient")):
        with pytest.raises(ConfigError, match=match):
            moe.check_layout(m, **{"expert_parallel": 1, "data_parallel": 2, **kwargs})
    with pytest.raises(ConfigError, match="needs a mixture of experts"):
        moe.check_layout(preset("llama_tiny"), expert_parallel=2, data_parallel=2)


# --- expert parallel 2 against 1, for real -------------------------------------------------

def test_expert_parallel_trains_the_same_model_with_and_without_token_dropping(tmp_path):
    """ZeRO-2 on 2 CPU ranks, SGD with momentum, no clipping (a wrong expert-gradient scale
    shows, which Adam would hide): expert parallel 2 (2 experts per rank, tokens exchanged by
    all-to-all) within 1e-4 of expert parallel 1 at every step, token dropping on and off."""
    runs = {}
    for drop in ("true", "false"):  # one sweep each: records redact drop_tokens (its name has "token")
        done = run_sweep(tmp_path / drop, "experiment=parity", "model=moe_tiny", "strategy=zero2",
                         "strategy.expert_parallel=1,2", f"model.drop_tokens={drop}",
                         "optimizer=sgd_momentum", "optimizer.lr=0.1", "optimizer.gradient_clipping=0",
                         "report.enabled=false")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        [sweep] = sweep_dirs(tmp_path / drop)
        for path in sweep.glob("*/result.json"):
            r = json.loads(path.read_text())
            assert r["status"] == "ok", r.get("error")
            runs[r["config"]["strategy"]["expert_parallel"], drop] = r["metrics"]["loss_per_step"]
    assert len(runs) == 4
    for drop in ("true", "false"):
        one, two = runs[1, drop], runs[2, drop]
        assert len(one) == 6 and max(abs(a - b) for a, b in zip(one, two)) < 1e-4, (drop, one, two)
    # dropping changes what the model computes: some routes were over capacity
    assert max(abs(a - b) for a, b in zip(runs[1, "true"], runs[1, "false"])) > 1e-6
