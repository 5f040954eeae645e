"""The PyTorch baselines (strategy.engine torch_ddp, fsdp2): what they refuse, naming the field;
the torch_config their plan carries, against hand-checked values; and the engine's step
semantics (DeepSpeed's: loss / accumulation, one optimizer step per global batch, clip ->
step -> zero_grad -> schedule, gradients synchronised only in the last micro-batch). Their loss
parity with DeepSpeed on 2 ranks is shown by the shared parity sweeps, not here."""
import contextlib
import copy
import functools
import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from suite.config import ConfigError
from suite.plan import RunPlan, plan_run
from suite.workload.torch_engine import TorchEngine

CONF = Path(__file__).resolve().parents[1] / "conf"


@functools.lru_cache(maxsize=None)
def _composed(groups: tuple) -> dict:
    """Hydra's composition of these group choices (conf/strategy/torch_ddp.yaml, ...), once:
    ~0.3 s each, so the value overrides are applied to a copy of its plain values instead."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=list(groups))
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in cfg if k != "hydra"}


def plan(*overrides, gpus=0):
    """plan_run of the config `python -m suite.sweep <overrides>` composes: group choices
    (strategy=fsdp2) through Hydra, values (strategy.zero_stage=1) set as YAML values."""
    groups = tuple(o for o in overrides if "." not in o.split("=")[0])
    config = copy.deepcopy(_composed(groups))
    for override in overrides:
        key, value = override.split("=", 1)
        if "." in key:
            *parents, name = key.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[name] = yaml.safe_load(value)
    return plan_run(config, local_gpus=gpus)


@pytest.mark.parametrize("overrides, message", [
    (["strategy=torch_ddp", "strategy.zero_stage=1"],
     "strategy.engine=torch_ddp needs strategy.zero_stage=0, not 1"),
    (["strategy=fsdp2", "strategy.zero_stage=2"], "strategy.engine=fsdp2 needs strategy.zero_stage=3, not 2"),
    (["strategy=torch_ddp", "strategy.tensor_parallel=2"],
     "strategy.tensor_parallel=2 with strategy.engine=torch_ddp"),
    (["strategy=fsdp2", "strategy.pipeline_parallel=2"],
     "strategy.pipeline_parallel=2 with strategy.engine=fsdp2"),
    (["strategy=fsdp2", "strategy.sequence_parallel=2"],
     "strategy.sequence_parallel=2 with strategy.engine=fsdp2"),
    # not "offload needs zero_stage 1, 2 or 3", which would send a torch_ddp user the wrong way
    (["strategy=torch_ddp", "strategy.offload_optimizer=true"],
     "strategy.offload_optimizer/offload_params with strategy.engine=torch_ddp"),
    (["strategy=fsdp2", "strategy.offload_params=true"],
     "strategy.offload_optimizer/offload_params with strategy.engine=fsdp2"),
    (["strategy=fsdp2", "strategy.zero_quantized_weights=true"],
     r"ZeRO\+\+ \(strategy.zero_quantized_weights.*with strategy.engine=fsdp2"),
    (["strategy=fsdp2", "strategy.zero_hpz_partition_size=2"], r"zero_hpz_partition_size\) with"),
    (["strategy=torch_ddp", "train.activation_checkpointing=partitioned"],
     "train.activation_checkpointing=partitioned with strategy.engine=torch_ddp.*use full"),
    (["strategy=fsdp2", "train.activation_checkpointing=cpu"],
     "train.activation_checkpointing=cpu with strategy.engine=fsdp2"),
    (["strategy=torch_ddp", "precision.name=fp16"], "precision=fp16 with strategy.engine=torch_ddp.*use bf16 or fp32"),
    (["strategy=fsdp2", "optimizer.name=lamb"], "optimizer=lamb with strategy.engine=fsdp2"),
    (["strategy=torch_ddp", "optimizer.implementation=deepspeed"],
     "optimizer.implementation=deepspeed with strategy.engine=torch_ddp"),
    (["strategy=fsdp2", "train.compile=true"], "train.compile=true with strategy.engine=fsdp2"),
    (["strategy=torch_ddp", "train.profile_comms=true"], "train.profile_comms=true with strategy.engine=torch_ddp"),
    (["strategy=zero3", "strategy.fsdp_reshard_after_forward=false"],
     "strategy.fsdp_reshard_after_forward=false applies to strategy.engine=fsdp2 only"),
    (["strategy=torch_ddp", "strategy.fsdp_reshard_after_forward=false"],
     "strategy.fsdp_reshard_after_forward=false applies to strategy.engine=fsdp2 only, not torch_ddp"),
    (["strategy=torch_ddp", "strategy.engine=megatron"], r"strategy.engine='megatron' is not allowed; choose one of \['deepspeed', 'torch_ddp', 'fsdp2'\]"),
])
def test_refusals_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(*overrides)


def test_torch_ddp_fp32_adamw_config():
    p = plan("strategy=torch_ddp", "precision.name=fp32", "train.micro_batch_size=2",
             "train.global_batch_size=8", "train.warmup_steps=2", "train.timed_steps=4")
    assert p.ds_config == {} and p.engine == "torch_ddp" and p.compiled_ops == ()
    assert (p.micro_batch_size, p.grad_accum_steps, p.global_batch_size) == (2, 2, 8)
    assert p.torch_config == {
        "engine": "torch_ddp", "device": "cpu", "precision": "fp32",
        "micro_batch_size": 2, "gradient_accumulation_steps": 2, "global_batch_size": 8,
        "loss_scale_per_micro_batch": 0.5,
        "gradient_sync": "last micro-batch only (DDP no_sync)",
        "activation_checkpointing": None,
        # conf/optimizer/adamw.yaml: lr 1e-4, weight decay 0.1; the schema's betas and eps
        "optimizer": {"class": "torch.optim.AdamW",
                      "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
        # the default schedule: DeepSpeed's WarmupLR, linear from 0 to lr over 2 steps
        "lr_scheduler": {"class": "deepspeed.runtime.lr_schedules.WarmupLR",
                         "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-4,
                                    "warmup_num_steps": 2, "warmup_type": "linear"}},
        "gradient_clipping": 1.0,
        "order": ["clip_grad_norm_", "optimizer.step", "optimizer.zero_grad", "lr_scheduler.step"],
        "ddp": {"gradient_as_bucket_view": True, "bucket_cap_mb": 25},
        "autocast": None,  # fp32: nothing
    }
    json.dumps(p.to_dict())  # written into the run folder as it is


def test_torch_ddp_bf16_autocasts_the_forward_pass():
    p = plan("strategy=torch_ddp", "precision.name=bf16")
    assert p.torch_config["autocast"] == {"dtype": "bfloat16", "region": "forward"}


def test_fsdp2_bf16_sgd_momentum_config():
    p = plan("strategy=fsdp2", "precision.name=bf16", "optimizer.name=sgd_momentum", "optimizer.lr=0.001",
             "optimizer.momentum=0.9", "optimizer.weight_decay=0",
             "optimizer.scheduler=warmup_decay", "optimizer.gradient_clipping=0",
             "strategy.fsdp_reshard_after_forward=false", "train.activation_checkpointing=full",
             "train.warmup_steps=3", "train.timed_steps=10")
    c = p.torch_config
    assert p.ds_config == {} and p.engine == "fsdp2"
    assert c["fsdp2"] == {
        "units": ["each of model.blocks", "model (embedding, final norm, output head)"],
        "reshard_after_forward": False,
        "mp_policy": {"param_dtype": "bfloat16", "reduce_dtype": "float32"},
    }
    assert "ddp" not in c and "autocast" not in c
    # SGD's type for DeepSpeed and torch alike, with exactly these three (DeepSpeed's "SGD")
    assert c["optimizer"] == {"class": "torch.optim.SGD",
                              "params": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0}}
    assert c["lr_scheduler"] == {
        "class": "deepspeed.runtime.lr_schedules.WarmupDecayLR",
        "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": 2,
                   "warmup_type": "linear", "total_num_steps": 13}}  # 3 warm-up + 10 timed
    assert c["gradient_clipping"] == 0.0
    assert c["activation_checkpointing"] == "torch.utils.checkpoint per block (non-reentrant)"
    assert (c["gradient_accumulation_steps"], c["loss_scale_per_micro_batch"]) == (1, 1.0)
    assert c["gradient_sync"] == "last micro-batch only (FSDP2 set_requires_gradient_sync(False))"


def test_fsdp2_fp32_has_no_mixed_precision_policy():
    p = plan("strategy=fsdp2", "precision.name=fp32", "optimizer.name=adagrad", "optimizer.lr=0.01",
             "optimizer.weight_decay=0")
    assert p.torch_config["fsdp2"]["mp_policy"] == {"param_dtype": None, "reduce_dtype": None}
    assert p.torch_config["fsdp2"]["reshard_after_forward"] is True
    # eps: the schema's default (1e-8)
    assert p.torch_config["optimizer"] == {"class": "torch.optim.Adagrad",
                                           "params": {"lr": 1e-2, "eps": 1e-8, "weight_decay": 0.0}}


def test_adam_on_gpus_is_torch_fused():
    p = plan("strategy=torch_ddp", "optimizer.name=adam", "cluster.accelerator=cuda",
             "cluster.gpus_per_node=8")
    assert p.precision == "bf16" and p.torch_config["device"] == "cuda"
    assert p.torch_config["optimizer"]["class"] == "torch.optim.Adam"  # adam_w_mode false
    assert p.torch_config["optimizer"]["params"]["fused"] is True


def test_deepspeed_plans_are_unchanged_and_old_plans_load():
    p = plan("strategy=ddp")
    assert p.torch_config == {} and p.engine == "deepspeed" and p.ds_config["zero_optimization"] == {"stage": 0}
    old = p.to_dict()
    del old["torch_config"]  # a submission.json from before the baselines
    assert RunPlan.from_dict(old) == p
    fsdp = plan("strategy=fsdp2")
    assert RunPlan.from_dict(json.loads(json.dumps(fsdp.to_dict()))) == fsdp


class _Recorder(nn.Module):
    """One weight; records the calls the engine makes (DDP's no_sync included)."""

    def __init__(self, log):
        super().__init__()
        self.w, self.log = nn.Parameter(torch.tensor([3.0])), log

    def forward(self, x):
        self.log.append("forward")
        return (self.w * x).sum()

    @contextlib.contextmanager
    def no_sync(self):
        self.log.append("no_sync on")
        yield
        self.log.append("no_sync off")


class _SGD:
    """Plain SGD, lr 1 (torch.optim's first step imports TorchDynamo: ~3 s for nothing here)."""

    def __init__(self, module, log):
        self.module, self.log = module, log

    def step(self):
        self.log.append(f"step with grad={self.module.w.grad.item():g}")
        with torch.no_grad():
            self.module.w -= self.module.w.grad

    def zero_grad(self, set_to_none):
        self.log.append("zero_grad")
        self.module.w.grad = None


def test_engine_steps_as_deepspeed_does():
    log = []
    module = _Recorder(log)

    class Schedule:
        def step(self):
            log.append(f"schedule after w={module.w.item():g}")

    engine = TorchEngine(module, _SGD(module, log), Schedule(),
                         {"engine": "torch_ddp", "gradient_accumulation_steps": 2,
                          "gradient_clipping": 0.5, "autocast": None}, torch.device("cpu"))
    for x in (1.0, 3.0):  # one global batch of two micro-batches
        loss = engine(torch.tensor([x]))
        assert loss.item() == 3.0 * x  # unscaled, as DeepSpeed's engine returns it
        engine.backward(loss)
        engine.step()
    # gradient (1 + 3) / 2 = 2 (each micro-batch's loss / 2), clipped to norm 0.5 (x 0.5 /
    # (2 + 1e-6)), then one step; the gradient synchronised in the second backward only
    assert log == ["no_sync on", "forward", "no_sync off", "forward", "step with grad=0.5",
                   "zero_grad", "schedule after w=2.5"]
    assert module.w.item() == pytest.approx(2.5, abs=1e-6)


# --- the forward timer of the straggler table (suite/workload/train.py) ---------------------

class _Clock:
    """A stand-in for the GPU's stream: forward passes advance it; events read it."""

    def __init__(self):
        self.now_ms, self.synchronised, self.log = 0.0, False, []


class _FakeEvent:
    """torch.cuda.Event(enable_timing=True) without a GPU: record() stamps the clock;
    elapsed_time() is only allowed once the device has been synchronised (as CUDA's is only
    meaningful after the end event completed), in milliseconds as CUDA's."""

    def __init__(self, clock):
        self.clock, self.at = clock, None

    def record(self):
        self.clock.log.append("record")
        self.at = self.clock.now_ms

    def synchronize(self):
        self.clock.log.append("event.synchronize")

    def elapsed_time(self, end):
        assert self.clock.synchronised, "events read before the step's final synchronize"
        return end.at - self.at


class _TimedEngine:
    def __init__(self, clock, forward_ms):
        self.clock, self.forward_ms, self.calls = clock, list(forward_ms), 0

    def __call__(self, batch):
        self.clock.log.append("forward")
        self.clock.now_ms += self.forward_ms[self.calls]
        self.calls += 1
        return torch.tensor(float(batch))

    def backward(self, loss):
        self.clock.log.append("backward")
        self.clock.now_ms += 100.0  # not forward time

    def step(self):
        self.clock.log.append("step")


def test_the_cuda_forward_timer_never_synchronises_between_micro_batches(monkeypatch):
    from suite.workload import device, train

    clock = _Clock()

    def synchronize():
        clock.log.append("synchronize")
        clock.synchronised = True

    monkeypatch.setattr(device, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: synchronize())
    timer = train.CudaForwardTimer(event=lambda: _FakeEvent(clock))
    assert isinstance(train.forward_timer("cuda"), train.CudaForwardTimer)
    assert isinstance(train.forward_timer("cpu"), train.CpuForwardTimer)
    # 2 steps of 3 micro-batches; forward passes of 1, 2, 3 then 4, 5, 6 ms
    engine = _TimedEngine(clock, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    step_fn = lambda step: train.micro_batch_steps(engine, [1, 2, 3], timer, lambda loss: loss)  # noqa: E731
    times, losses = train.timed_loop(step_fn, warmup=0, timed=2)
    # the loop's own bracket only: one synchronize before and after each step, none inside
    per_step = ["synchronize"] + ["record", "forward", "record", "backward", "step"] * 3 + ["synchronize"]
    assert clock.log == per_step * 2
    assert [float(x) for x in losses] == [2.0, 2.0]
    # the forward seconds are the events', read after the loop: 1 + 2 + 3 ms, 4 + 5 + 6 ms
    assert timer.step_seconds() == pytest.approx([0.006, 0.015])


def test_the_slowed_rank_waits_for_its_own_forward_pass_only(monkeypatch):
    from suite.workload import train

    clock, slept = _Clock(), []
    monkeypatch.setattr(train.time, "sleep", slept.append)
    timer = train.CudaForwardTimer(stretch=1.0, event=lambda: _FakeEvent(clock))
    engine = _TimedEngine(clock, [2.0, 4.0])
    clock.synchronised = True  # the end event was waited for (event.synchronize), not the device
    train.micro_batch_steps(engine, [1, 2], timer, lambda loss: loss)
    assert "synchronize" not in clock.log and clock.log.count("event.synchronize") == 2
    assert slept == pytest.approx([0.002, 0.004])  # train.fault_slowdown=1: twice as long
    assert timer.step_seconds() == pytest.approx([0.012])  # 6 ms on the GPU + 6 ms asleep


def test_the_cpu_forward_timer_is_the_clock_around_the_pass(monkeypatch):
    from suite.workload import device, train

    monkeypatch.setattr(device, "synchronize", lambda: pytest.fail("synchronised"))
    ticks = iter([10.0, 10.25, 11.0, 11.5])
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(ticks))
    timer = train.CpuForwardTimer()
    engine = _TimedEngine(_Clock(), [0.0, 0.0])
    train.micro_batch_steps(engine, [1, 2], timer, lambda loss: loss)
    assert timer.step_seconds() == [0.75]  # 0.25 + 0.5
