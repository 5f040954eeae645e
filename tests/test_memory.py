"""The per-device memory model (suite/memory.py): each family's activation count against what
autograd really keeps (saved_tensors_hooks, one count per storage, parameters excluded) on
the CPU in fp32 and bf16, the loss's peak against a live-storage tracker, and every term
against hand-computed bytes. Tiny shapes, no engine, no processes."""
import dataclasses
import importlib
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

from suite import memory
from suite.config import ClusterConfig, ModelConfig, StrategyConfig, SuiteConfig, TrainConfig
from suite.metrics import model_state_memory
from suite.models.layers import next_token_loss
from suite.plan import plan_run

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gpt(**shape) -> ModelConfig:
    # the tiny GPT: d 64, 4 heads, ffn 4 d = 256, vocab 512
    return ModelConfig(**{"name": "t", "family": "gpt", "n_layers": 2, "d_model": 64, "n_heads": 4,
                          "seq_len": 64, "vocab_size": 512, **shape})


def llama(**shape) -> ModelConfig:
    # grouped-query: 4 query heads of 16, 2 key/value heads
    return ModelConfig(**{"name": "t", "family": "llama", "n_layers": 2, "d_model": 64, "n_heads": 4,
                          "n_kv_heads": 2, "ffn_dim": 128, "seq_len": 32, "vocab_size": 256, **shape})


def saved_bytes(run, exclude) -> int:
    """Bytes of the distinct storages autograd saves while `run()` builds its graph; storages
    of `exclude` (parameters) are left out. Views of one tensor share a storage: counted once."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storages.values())


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages that ops create under this mode and that are still alive (a
    weakref finalizer per storage), and their peak; storages of `exclude` are not counted."""

    def __init__(self, exclude=()):
        super().__init__()
        self.live = self.peak = 0
        self.known = {t.untyped_storage().data_ptr() for t in exclude}

    def _freed(self, key, nbytes):
        self.live -= nbytes
        self.known.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.known:
                    self.known.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, nbytes)
        return out


def block_of(m: ModelConfig, dtype):
    return importlib.import_module(f"suite.models.{m.family}.model").Block(m, 0, "blocks.0").to(dtype)


def head_of(m: ModelConfig, dtype):
    return importlib.import_module(f"suite.models.{m.family}.model").Head(m, 0).to(dtype)


# --- the per-layer count against autograd ------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("m", [gpt(), llama()], ids=["gpt", "llama-gqa"])
def test_a_block_keeps_exactly_what_the_family_formula_says(m, precision):
    dtype, batch = DTYPES[precision], 2
    block = block_of(m, dtype)
    x = torch.randn(batch, m.seq_len, m.d_model, dtype=dtype, requires_grad=True)
    measured = saved_bytes(lambda: block(x), block.parameters())
    tokens = batch * m.seq_len
    predicted = (tokens * memory.block_bytes_per_token(m, precision, accelerator="cpu")
                 + m.seq_len * memory.block_bytes_per_position(m, accelerator="cpu"))
    assert measured == predicted  # exactly: no scalars in a block


def test_the_cuda_count_differs_from_the_cpu_one_only_in_the_norms():
    # gpt: LayerNorm's 2 x 2 statistics per token move from the activation dtype (CPU) to fp32
    # (CUDA); llama: RMSNorm's fused CUDA kernel keeps its d-element input in the activation
    # dtype where the CPU composite keeps 2 d fp32 (upcast input, x * rstd), for 2 norms.
    g = gpt()
    assert (memory.block_bytes_per_token(g, "bf16", accelerator="cuda")
            - memory.block_bytes_per_token(g, "bf16", accelerator="cpu")) == 4 * (4 - 2)
    m = llama()
    assert (memory.block_bytes_per_token(m, "bf16", accelerator="cpu")
            - memory.block_bytes_per_token(m, "bf16", accelerator="cuda")) == 2 * (2 * 64 * 4 - 64 * 2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("m", [gpt(), llama()], ids=["gpt", "llama"])
def test_head_and_loss_keep_and_peak_at_what_logits_bytes_says(m, precision):
    dtype, batch, V = DTYPES[precision], 2, m.vocab_size
    tokens = batch * m.seq_len
    head = head_of(m, dtype)
    x = torch.randn(batch, m.seq_len, m.d_model, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, V, (batch, m.seq_len + 1))
    kept = saved_bytes(lambda: next_token_loss(head(x), ids[:, 1:]), head.parameters())
    # after forward the loss keeps log_softmax's fp32 output (4 V per token) and the targets;
    # at its backward peak two fp32 gradients of that size join it (12 V per token); the
    # 4 bytes are nll_loss's total_weight scalar
    predicted = memory.logits_bytes(m, batch, precision, accelerator="cpu")
    assert kept - 4 + tokens * 8 * V == predicted

    logits = torch.randn(batch, m.seq_len, V, dtype=dtype, requires_grad=True)
    with LiveBytes(exclude=[logits, ids]) as live:
        next_token_loss(logits, ids[:, 1:]).backward()
    # 12 V per token, in log_softmax's backward (+ 8 bytes of scalars: the loss, its gradient;
    # nll_loss's backward has run and freed the targets by then, so logits_bytes's 8 bytes per
    # token of targets lean high); the bf16 logits' own gradient (2 V) comes after the fp32
    # ones are freed
    assert live.peak == tokens * 12 * V + 8


# --- hand-computed bytes -------------------------------------------------------------------

def test_gpt_activation_bytes_by_hand():
    m = gpt()  # d 64, ffn 256, 4 heads, seq 64, 2 layers; micro-batch 2 -> 128 tokens
    # per token per layer: 8 d + 2 f = 512 + 512 = 1,024 elements in the activation dtype,
    # 4 LayerNorm statistics + 4 logsumexp (one per head) = 8 in fp32 (CUDA)
    # fp32: 2 layers x 128 tokens x (1,024 x 4 + 8 x 4) = 2 x 128 x 4,128
    assert memory.activation_bytes(m, 2, "fp32", "none") == 1_056_768
    # bf16: 2 x 128 x (1,024 x 2 + 8 x 4) = 2 x 128 x 2,080
    assert memory.activation_bytes(m, 2, "bf16", "none") == 532_480
    # Korthikanti et al.'s 34 sbh in 16-bit, less their two dropout masks (2 sbh bytes), is
    # 32 bytes per token per d: our 1,024 x 2 = 2,048 = 32 x 64
    assert 1_024 * 2 == (34 - 2) * 64


def test_llama_activation_bytes_by_hand():
    m = llama()  # d 64, 4 heads of 16, 2 kv heads (32), ffn 128, seq 32, 2 layers
    # per token per layer in bf16 on CUDA: two norm inputs 128 + q/k/v input 64 + q 64 + k 32
    # + v 32 + attention output 64 + gate/up input 64 + gate, silu, up, product 4 x 128 = 512
    # -> 960 x 2 bytes; fp32: 2 rstd + 4 logsumexp = 6 x 4 bytes -> 1,944 bytes
    # micro-batch 2 -> 64 tokens: 2 layers x 64 x 1,944 = 248,832; RoPE's cos and sin for q
    # and for k: 2 x 16 fp32 per position -> 2 layers x 32 positions x 128 = 8,192
    assert memory.activation_bytes(m, 2, "bf16", "none") == 248_832 + 8_192


def test_tensor_and_sequence_parallel_split_what_they_split():
    m = gpt()
    # TP 2, bf16: replicated 4 d (ln_1 in and out, ln_2 in and out) = 256, split by heads and
    # ffn (qkv 3 d + attention output d + 2 f) / 2 = 768 / 2 = 384 -> 640 x 2 bytes; fp32:
    # 4 statistics + 4 / 2 logsumexp = 6 x 4 -> 1,304 bytes x 128 tokens x 2 layers
    assert memory.activation_bytes(m, 2, "bf16", "none", tensor_parallel=2) == 333_824
    # Ulysses 2: 64 tokens per rank, and the attention output twice (+ d = 128 bytes):
    # 2 layers x 64 x (2,080 + 128)
    assert memory.activation_bytes(m, 2, "bf16", "none", sequence_parallel=2) == 282_624


def test_checkpointing_keeps_block_inputs_and_one_block():
    m = gpt()
    # full: 2 layers x 128 tokens x d 64 x 4 bytes = 65,536 of block inputs, plus one block
    # recomputed in backward: 128 x 4,128 = 528,384
    assert memory.activation_bytes(m, 2, "fp32", "full") == 65_536 + 528_384
    # partitioned: DeepSpeed's partition degree is 1 in this suite (no mpu given): the same
    assert memory.activation_bytes(m, 2, "fp32", "partitioned") == 65_536 + 528_384
    # cpu: the inputs go to host memory; only the recomputed block stays on the device
    assert memory.activation_bytes(m, 2, "fp32", "cpu") == 528_384
    # pipeline 2, 2 micro-batches in flight: 1 layer x 2 x 128 x 64 x 4 = 65,536 + one block
    # 528,384 + the stage's output held per micro-batch, 2 x 128 x 64 x 4 = 65,536
    assert memory.activation_bytes(m, 2, "fp32", "full", pipeline_parallel=2) == 659_456


def test_torch_checkpoint_really_keeps_only_the_block_inputs():
    m = gpt()
    blocks = [block_of(m, torch.float32), block_of(m, torch.float32)]
    params = [p for b in blocks for p in b.parameters()]
    leaf = torch.randn(2, m.seq_len, m.d_model, requires_grad=True)
    with LiveBytes(exclude=params + [leaf]) as live:
        x = leaf * 1.0  # the embedding's output
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
    # block 0's and block 1's inputs, and block 1's output (the head's input): 3 x 128 x 64 x 4
    assert live.live == 3 * 32_768


def test_logits_bytes_by_hand():
    m = gpt()  # vocab 512, 128 tokens
    # head (CUDA, bf16): ln_f input + output-projection input 2 x 64 x 2 = 256, ln_f mean and
    # rstd 2 x 4 = 8; targets 8; the loss 12 x 512 = 6,144 -> 6,416 bytes per token
    assert memory.logits_bytes(m, 2, "bf16") == 128 * 6_416
    # the head is replicated under TP; Ulysses halves the tokens
    assert memory.logits_bytes(m, 2, "bf16", tensor_parallel=2) == 128 * 6_416
    assert memory.logits_bytes(m, 2, "bf16", sequence_parallel=2) == 64 * 6_416


# --- buffers -----------------------------------------------------------------------------------

def strategy(**fields) -> StrategyConfig:
    return StrategyConfig(**fields)


TINY = 169_728  # the tiny GPT's parameters (tests/test_models.py)


@pytest.mark.parametrize("precision, width", [("fp32", 4), ("bf16", 2)])
def test_zero_buffers_at_deepspeeds_default_bucket(precision, width):
    # the default reduce_bucket_size is 5e8 elements, allocated whole however small the model
    s1, s2 = strategy(zero_stage=1), strategy(zero_stage=2, overlap_comm=True)
    assert memory.buffer_bytes(s1, precision, TINY) == 500_000_000 * width
    assert memory.buffer_bytes(strategy(zero_stage=2), precision, TINY) == 500_000_000 * width
    # overlap_comm: a second bucket
    assert memory.buffer_bytes(s2, precision, TINY) == 2 * 500_000_000 * width
    # stage 3: the bucket + every parameter gathered (fewer than stage3_max_live_parameters)
    assert memory.buffer_bytes(strategy(zero_stage=3), precision, TINY) == (500_000_000 + TINY) * width
    # stage 3 with more parameters than max_live (1e9): capped there
    assert memory.buffer_bytes(strategy(zero_stage=3), precision, 7e9) == (500_000_000 + 1_000_000_000) * width
    # stage 0: the all-reduce flattens all gradients (fewer than its 5e8 bucket)
    assert memory.buffer_bytes(strategy(zero_stage=0), precision, TINY) == TINY * width
    assert memory.buffer_bytes(strategy(zero_stage=0), precision, 7e9) == 500_000_000 * width


def test_the_fp32_trap_is_about_two_gib():
    assert memory.buffer_bytes(strategy(zero_stage=2), "fp32", TINY) / 2 ** 30 == pytest.approx(1.863, abs=1e-3)


def test_buffers_without_contiguous_gradients_and_of_other_engines():
    # without contiguous_gradients the bucket is flattened when reduced: min(bucket, params)
    assert memory.buffer_bytes(strategy(zero_stage=2, contiguous_gradients=False), "bf16", TINY) == TINY * 2
    # DDP's buckets are the gradients themselves (gradient_as_bucket_view=True); in bf16,
    # autocast's bf16 copies of the matmul weights (the tiny GPT's 132,864 non-embedding) x 2
    ddp = strategy(engine="torch_ddp")
    assert memory.buffer_bytes(ddp, "fp32", TINY) == 0
    assert memory.buffer_bytes(ddp, "bf16", TINY, matmul_params=132_864) == 265_728
    # FSDP2: largest unit (the root: embeddings 36,864 + head 32,896 = 69,760 > a block's
    # 49,984), x 2 for prefetch, bf16
    assert memory.largest_unit_params(gpt()) == 69_760
    fsdp2 = strategy(engine="fsdp2", zero_stage=3)
    assert memory.buffer_bytes(fsdp2, "bf16", TINY, largest_unit_params=69_760) == 2 * 69_760 * 2
    # not resharded after forward: every unit stays gathered, the whole model in bf16
    kept = strategy(engine="fsdp2", zero_stage=3, fsdp_reshard_after_forward=False)
    assert memory.buffer_bytes(kept, "bf16", TINY, largest_unit_params=69_760) == TINY * 2


# --- the whole prediction ------------------------------------------------------------------

def tiny_run(**strategy_fields):
    cfg = SuiteConfig(model=gpt(name="tiny"), strategy=StrategyConfig(**strategy_fields),
                      cluster=ClusterConfig(accelerator="cpu", cpu_ranks=2),
                      train=TrainConfig(micro_batch_size=2))
    return cfg, plan_run(cfg)


def test_predict_memory_sums_the_terms_and_adds_the_allowance():
    cfg, plan = tiny_run(zero_stage=2)
    out = memory.predict_memory(cfg, plan)
    states = model_state_memory(n_params=TINY, precision="fp32", optimizer="adamw", zero_stage=2, dp=2)
    assert out["model_state_bytes"] == states["model_state_bytes_predicted"]
    assert out["activation_bytes"] == memory.activation_bytes(cfg.model, 2, "fp32", "none", accelerator="cpu")
    assert out["logits_bytes"] == memory.logits_bytes(cfg.model, 2, "fp32", accelerator="cpu")
    assert out["buffer_bytes"] == 2_000_000_000
    parts = out["model_state_bytes"] + out["activation_bytes"] + out["logits_bytes"] + out["buffer_bytes"]
    assert out["predicted_bytes"] == parts
    assert out["required_bytes"] == pytest.approx(parts * 1.10)  # no CUDA context on the CPU

    on_gpu = memory.predict_memory(cfg, dataclasses.replace(plan, accelerator="cuda"))
    assert on_gpu["required_bytes"] == pytest.approx(on_gpu["predicted_bytes"] * 1.10 + 2 ** 30)


def test_predict_memory_by_hand_for_plain_data_parallel():
    cfg, plan = tiny_run(zero_stage=0)
    out = memory.predict_memory(cfg, plan)
    # model states: 169,728 x (4 + 4 + 8) = 2,715,648; buffers: the flattened fp32 gradients
    # 169,728 x 4 = 678,912; activations on the CPU in fp32: 2 layers x 128 tokens x
    # (1,024 + 8) x 4 = 1,056,768 (the same count as CUDA's in fp32); logits: 128 tokens x
    # (head (64 + 64 + 2) x 4 = 520 + targets 8 + 12 x 512) = 128 x 6,672 = 854,016
    assert out["model_state_bytes"] == 2_715_648
    assert out["buffer_bytes"] == 678_912
    assert out["activation_bytes"] == 1_056_768
    assert out["logits_bytes"] == 854_016
    assert out["predicted_bytes"] == 2_715_648 + 678_912 + 1_056_768 + 854_016


def test_predict_memory_for_torch_ddp_and_fsdp2():
    cfg, plan = tiny_run(engine="torch_ddp")
    out = memory.predict_memory(cfg, plan)
    assert out["model_state_bytes"] == 2_715_648  # stage 0: 16 bytes per parameter (fp32 AdamW)
    assert out["buffer_bytes"] == 0
    cfg, plan = tiny_run(engine="fsdp2", zero_stage=3)
    out = memory.predict_memory(cfg, plan)
    # stage 3 over 2 ranks: 169,728 x 16 / 2; buffers: the root unit 69,760 x 4 bytes x 2
    assert out["model_state_bytes"] == 1_357_824
    assert out["buffer_bytes"] == 558_080


# --- the build: the weights made before the engine shards or casts them ----------------------

def test_the_build_term_by_hand_and_the_gpu_check_takes_the_larger_peak():
    # AutoTP: DeepSpeed splits a model built whole, so every GPU first holds the whole model in
    # fp32: llama3_1_8b, 8,030,261,248 parameters x 4 = 32,121,044,992 bytes (29.92 GiB), though
    # training holds far less (tp 8, ZeRO-1 over 2 replicas, bf16, recompute full): 26,343,136,768
    llama8b = ModelConfig(name="llama3_1_8b", family="llama", n_layers=32, d_model=4096, n_heads=32,
                          n_kv_heads=8, ffn_dim=14336, vocab_size=128256, seq_len=8192, rope_theta=500000.0)
    from suite.config import PrecisionConfig

    cfg = SuiteConfig(model=llama8b, strategy=StrategyConfig(name="tp8", zero_stage=1, tensor_parallel=8),
                      precision=PrecisionConfig(name="bf16"),
                      cluster=ClusterConfig(scheduler="slurm", accelerator="cuda", gpus_per_node=8, nodes=2,
                                            gpu_memory_gb=32),
                      train=TrainConfig(micro_batch_size=1, activation_checkpointing="full"))
    plan = plan_run(cfg, check_memory=False)
    out = memory.predict_memory(cfg, plan)
    assert out["build_bytes"] == 8_030_261_248 * 4 == 32_121_044_992
    assert out["predicted_bytes"] == 26_343_136_768  # the training terms, as before
    # max(build, training) x 1.1 + the CUDA context: 33.91 GiB, not 27.99
    assert out["required_bytes"] == pytest.approx(32_121_044_992 * 1.1 + 2 ** 30)
    from suite.config import ConfigError

    with pytest.raises(ConfigError, match=r"needs 33\.91 GiB per device by the memory model"):
        plan_run(cfg)  # on 32 GiB GPUs: the build does not fit, training alone would
    # where training is the larger peak, the build changes nothing
    small, plan = tiny_run(zero_stage=0)
    out = memory.predict_memory(small, plan)
    assert out["build_bytes"] == TINY * 4 < out["predicted_bytes"]
    assert out["required_bytes"] == pytest.approx(out["predicted_bytes"] * 1.1)


def test_the_build_of_each_engine():
    # ZeRO-3: zero.Init partitions each layer as it is built
    assert memory.predict_memory(*tiny_run(zero_stage=3))["build_bytes"] == 0
    # torch DDP: the whole model, on every rank's device
    assert memory.predict_memory(*tiny_run(engine="torch_ddp"))["build_bytes"] == TINY * 4
    # FSDP2 builds on the meta device and materialises each rank's shards only: the fp32 shards
    # (169,728 / 2) and one whole parameter at a time, the largest (the 512 x 64 token table)
    cfg, plan = tiny_run(engine="fsdp2", zero_stage=3)
    assert memory.predict_memory(cfg, plan)["build_bytes"] == (169_728 / 2 + 512 * 64) * 4 == 470_528
    assert memory.host_memory_per_rank(cfg, plan)["build_bytes"] == 470_528


def test_the_expert_states_are_split_over_ep_and_sharded_over_the_expert_data_parallel_group(compose_cfg):
    from suite.plan import plan_run

    cfg = compose_cfg("model=moe_tiny", "strategy=zero2", "strategy.expert_parallel=2", "optimizer=adamw",
                      "precision=fp32", "train.micro_batch_size=2")
    plan = plan_run(cfg)
    # moe_tiny: 2 layers x 4 experts x 3 x d 64 x ffn 128 = 196,608 routed-expert parameters of
    # 336,704; dense 140,096 on every rank, experts 196,608 / ep 2 = 98,304 per rank
    assert memory.state_groups(cfg, plan) == [(140_096, 2), (98_304, 1)]
    # ZeRO-2, fp32 AdamW: 4 bytes of weights whole + (4 gradient + 8 Adam) bytes over the group:
    # dense 4 x 140,096 + 12 x 140,096 / 2 = 1,400,960; experts over dp / ep = 1 rank:
    # 4 x 98,304 + 12 x 98,304 = 1,572,864
    need = memory.predict_memory(cfg, plan)
    assert need["model_state_bytes"] == 1_400_960 + 1_572_864
    # dispatch + combine per MoE layer: 4 experts x capacity ceil(1.0 x 2 x 64 / 4) = 32 tokens
    # x d 64 x 4 bytes, twice, in 2 layers = 131,072 bytes
    assert memory.moe_dispatch_bytes(cfg.model, 2, "fp32") == 2 * 2 * 4 * 32 * 64 * 4
    dense = compose_cfg("model=llama_tiny", "strategy=zero2")
    assert memory.moe_dispatch_bytes(dense.model, 2, "fp32") == 0
    assert memory.state_groups(dense, plan_run(dense)) == [(memory.models.param_count(dense.model)["total"], 2)]
