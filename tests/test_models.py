"""Model families (suite/models): parameter counts and FLOPs per token against hand-computed
numbers, the published Llama shapes, the layout refusals each family adds, and an
initialisation that gives independent weights and a first loss near ln(vocab)."""
import math
from pathlib import Path

import pytest
import torch
import yaml

from suite import models
from suite.config import ConfigError, ModelConfig
from suite.plan import plan_run

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


def preset(name: str) -> ModelConfig:
    fields = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    fields.pop("defaults")
    return ModelConfig(**fields)


def llama(**shape) -> ModelConfig:
    return ModelConfig(**{"name": "t", "family": "llama", **shape})


# --- GPT: the same counts as before it became a plug-in ------------------------------------

def test_param_count_of_the_tiny_gpt():
    # per block 12*64^2 + 13*64 = 49,984; embeddings 512*64 + 64*64 = 36,864;
    # head 2*64 + 64*512 = 32,896; total 36,864 + 2*49,984 + 32,896 = 169,728
    # a dense model: every parameter is active (each token passes through all of them)
    assert models.param_count(preset("tiny")) == {"total": 169_728, "embedding": 36_864,
                                                  "non_embedding": 132_864, "active": 169_728,
                                                  "active_non_embedding": 132_864}


def test_param_count_of_gpt3_125m():
    # per block 12*768^2 + 13*768 = 7,087,872; embeddings (50,304 + 2,048)*768 = 40,206,336;
    # head 2*768 + 768*50,304 = 38,635,008; total 40,206,336 + 12*7,087,872 + 38,635,008
    assert models.param_count(preset("gpt_125m")) == {
        "total": 163_895_808, "embedding": 40_206_336, "non_embedding": 123_689_472,
        "active": 163_895_808, "active_non_embedding": 123_689_472}


def test_flops_per_token_of_the_tiny_gpt():
    m = preset("tiny")
    # 6*132,864 + 12 * 2 layers * 4 heads * 16 head dim * 64 tokens = 797,184 + 98,304
    assert models.flops_per_token(m) == 895_488
    # causal: the attention term halved, 797,184 + 49,152
    assert models.flops_per_token(m, causal=True) == 846_336
    # one more forward when every block is recomputed: 2*132,864 + 4*2*4*16*64 = 265,728 + 32,768
    assert models.recompute_flops_per_token(m) == 298_496


# --- Llama: the published shapes --------------------------------------------------------

def test_llama3_1_8b_has_its_published_parameter_count():
    # embedding 128,256*4,096 = 525,336,576 (and the same again for the untied head);
    # per block: q 4,096^2 = 16,777,216, k and v 4,096*1,024 = 4,194,304 each, o 16,777,216,
    # MLP 3*4,096*14,336 = 176,160,768, two norms 8,192 -> 218,112,000; x 32 = 6,979,584,000;
    # + final norm 4,096 -> 525,336,576*2 + 6,979,584,000 + 4,096 = 8,030,261,248
    m = preset("llama3_1_8b")
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.ffn_dim, m.vocab_size,
            m.seq_len) == (32, 4096, 32, 8, 14336, 128256, 8192)
    assert models.param_count(m) == {"total": 8_030_261_248, "embedding": 525_336_576,
                                     "non_embedding": 7_504_924_672, "active": 8_030_261_248,
                                     "active_non_embedding": 7_504_924_672}


@pytest.mark.parametrize("name, total", [
    # 1B, tied: embedding 128,256*2,048 = 262,668,288; per block q 2,048^2 = 4,194,304,
    # k, v 2,048*512 = 1,048,576 each, o 4,194,304, MLP 3*2,048*8,192 = 50,331,648, norms
    # 4,096 -> 60,821,504; x 16 = 973,144,064; + final norm 2,048 (no separate head)
    ("llama3_2_1b", 262_668_288 + 973_144_064 + 2_048),
    # 3B, tied: embedding 128,256*3,072 = 394,002,432; per block q 3,072^2 = 9,437,184,
    # k, v 3,072*1,024 = 3,145,728 each, o 9,437,184, MLP 3*3,072*8,192 = 75,497,472, norms
    # 6,144 -> 100,669,440; x 28 = 2,818,744,320; + final norm 3,072
    ("llama3_2_3b", 394_002_432 + 2_818_744_320 + 3_072),
    # 70B: embedding and head 128,256*8,192 = 1,050,673,152 each; per block q 8,192^2 =
    # 67,108,864, k, v 8,192*1,024 = 8,388,608 each, o 67,108,864, MLP 3*8,192*28,672 =
    # 704,643,072, norms 16,384 -> 855,654,400; x 80 = 68,452,352,000; + final norm 8,192
    ("llama3_1_70b", 2 * 1_050_673_152 + 68_452_352_000 + 8_192),
    # 405B: embedding and head 128,256*16,384 = 2,101,346,304 each; per block q 16,384^2 =
    # 268,435,456, k, v 16,384*1,024 = 16,777,216 each, o 268,435,456, MLP 3*16,384*53,248
    # = 2,617,245,696, norms 32,768 -> 3,187,703,808; x 126 = 401,650,679,808; + 16,384
    ("llama3_1_405b", 2 * 2_101_346_304 + 401_650_679_808 + 16_384),
])
def test_llama_presets_have_their_published_parameter_counts(name, total):
    assert models.param_count(preset(name))["total"] == total


def test_a_tied_head_counts_once_but_is_still_a_matmul():
    tied, untied = preset("llama3_2_1b"), ModelConfig(**{**vars(preset("llama3_2_1b")),
                                                         "tie_embeddings": False})
    assert models.param_count(untied)["total"] - models.param_count(tied)["total"] == 128_256 * 2_048
    # the output projection is a matmul either way: the same FLOPs per token
    assert models.flops_per_token(tied) == models.flops_per_token(untied)
    # and active: the tied head counts among the active non-embedding parameters too
    assert models.param_count(tied)["active_non_embedding"] == models.param_count(tied)["non_embedding"]


def test_flops_per_token_of_llama3_1_8b_under_both_conventions():
    m = preset("llama3_1_8b")
    # 6N: 6 * 7,504,924,672 = 45,029,548,032; attention 12 * 32 layers * 32 heads * 128 * 8,192
    # = 12,884,901,888 -> 57,914,449,920; causal: half the attention term, 6,442,450,944
    assert models.flops_per_token(m) == 57_914_449_920
    assert models.flops_per_token(m, causal=True) == 51_471_998_976


@pytest.mark.parametrize("m", [preset("tiny"), preset("llama_tiny"),
                               llama(n_layers=3, d_model=96, n_heads=6, n_kv_heads=3, seq_len=32,
                                     vocab_size=256, tie_embeddings=True)],
                         ids=["gpt", "llama", "llama-tied-default-ffn"])
def test_param_count_matches_the_built_model(m):
    net = models.family(m.family).build(m, seed=0)
    assert sum(p.numel() for p in net.parameters()) == models.param_count(m)["total"]


def test_the_dry_run_line_names_parameters_and_both_flop_counts():
    assert models.describe(preset("llama3_1_8b")) == (
        "llama3_1_8b (llama): 8,030,261,248 parameters, 5.791e+10 FLOPs/token (5.147e+10 causal)")


# --- refusals ------------------------------------------------------------------------------

@pytest.fixture
def plan(compose_cfg):
    return lambda *overrides: plan_run(compose_cfg("model=llama_tiny", "cluster.cpu_ranks=4", *overrides))


def test_kv_heads_that_do_not_split_over_tensor_parallel_are_refused(plan):
    with pytest.raises(ConfigError, match=r"model.n_heads=4 and model.n_kv_heads=1 must be "
                                          r"divisible by strategy.tensor_parallel=2"):
        plan("strategy=tp2", "model.n_kv_heads=1")
    assert plan("strategy=tp2").tensor_parallel == 2  # 2 kv heads split over 2 ranks


def test_kv_heads_that_do_not_split_over_sequence_parallel_are_refused(plan):
    with pytest.raises(ConfigError, match=r"model.n_kv_heads=1 and model.seq_len=64 must be "
                                          r"divisible by strategy.sequence_parallel=2"):
        plan("strategy=sp2", "model.n_kv_heads=1")


def test_a_tied_head_is_refused_with_tensor_and_pipeline_parallel(plan):
    for strategy in ("tp2", "pp2"):
        with pytest.raises(ConfigError, match="model.tie_embeddings=true"):
            plan(f"strategy={strategy}", "model.tie_embeddings=true")
    assert plan("strategy=zero3", "model.tie_embeddings=true").world_size == 4


def test_shapes_a_family_cannot_build_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"model.family='mamba' is not allowed; choose one of \['gpt', 'llama'\]"):
        ModelConfig(family="mamba")
    with pytest.raises(ConfigError, match="model.n_kv_heads=2: the gpt family"):
        ModelConfig(n_kv_heads=2)
    with pytest.raises(ConfigError, match="model.n_heads=4 must be a multiple of model.n_kv_heads=3"):
        llama(n_kv_heads=3)


# --- initialisation ------------------------------------------------------------------------

def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().flatten() - a.mean().item(), b.detach().flatten() - b.mean().item()
    return float(a @ b / (a.norm() * b.norm()))


def test_every_weight_has_its_own_stream_and_the_first_loss_is_near_ln_vocab():
    for m in (preset("tiny"), preset("llama_tiny")):
        net = models.family(m.family).build(m, seed=0)
        weights = {n: p for n, p in net.named_parameters() if p.dim() == 2}
        names = sorted(weights)
        for i, a in enumerate(names):  # no weight is a copy or reshape of another's values
            for b in names[i + 1:]:
                n = min(weights[a].numel(), weights[b].numel())
                assert abs(_correlation(weights[a].flatten()[:n], weights[b].flatten()[:n])) < 0.1, (a, b)
        tokens = torch.randint(0, m.vocab_size, (8, m.seq_len + 1), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            loss = net(tokens).item()
        assert loss == pytest.approx(math.log(m.vocab_size), rel=0.03)


def test_the_same_seed_gives_the_same_weights_in_the_plain_and_the_pipeline_form():
    m = preset("llama_tiny")
    plain = dict(models.family("llama").build(m, seed=7).named_parameters())
    stages = [spec.build() for spec in models.family("llama").pipeline_layers(m, seed=7)]
    # pipeline layer 0 is the embedding, 1..n the blocks, n+1 the head: the plain model's names
    prefixes = ["embedding"] + [f"blocks.{i}" for i in range(m.n_layers)] + ["final"]
    for prefix, stage in zip(prefixes, stages):
        for name, p in stage.named_parameters():
            assert torch.equal(p, plain[f"{prefix}.{name}"]), name
    other = dict(models.family("llama").build(m, seed=8).named_parameters())
    assert not torch.equal(other["blocks.0.q_proj.weight"], plain["blocks.0.q_proj.weight"])


def test_rotary_attention_scores_depend_only_on_the_distance():
    from suite.models.llama.model import rotate

    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i: int, j: int) -> float:
        return float((rotate(q, torch.tensor([i]), 10_000.0) * rotate(k, torch.tensor([j]), 10_000.0)).sum())

    assert score(5, 2) == pytest.approx(score(103, 100), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    assert rotate(q, torch.tensor([0]), 10_000.0).equal(q)  # position 0 is not turned


def test_the_docs_preset_table_states_every_presets_count():
    text = (CONF.parent.parent / "docs" / "models.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[11].strip()
            for line in text.split("## Presets")[1].split("\n## ")[0].splitlines() if line.startswith("| `")}
    presets = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert sorted(rows) == presets
    active = {line.split("|")[1].strip(" `"): line.split("|")[14].strip()
              for line in text.split("## Presets")[1].split("\n## ")[0].splitlines() if line.startswith("| `")}
    for name in presets:
        assert rows[name] == f"{models.param_count(preset(name))['total']:,}", name
        assert active[name] == f"{models.param_count(preset(name))['active']:,}", name
