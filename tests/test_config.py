"""Every config group composes; bad values and unknown keys fail with a message naming them."""
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from suite.config import ConfigError
from suite.plan import to_object

from conftest import CONF

GROUPS = ["model", "strategy", "optimizer", "precision", "cluster"]


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS
                                          for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_option_composes_into_a_typed_config(compose_cfg, group, option):
    typed = to_object(compose_cfg(f"{group}={option}"))
    assert getattr(typed, group).name == option


def test_default_composition_is_the_smoke_sweep(compose_cfg):
    cfg = compose_cfg(return_hydra_config=True)
    typed = to_object(cfg)
    assert (typed.model.name, typed.strategy.name, typed.optimizer.name, typed.precision.name,
            typed.cluster.name) == ("tiny", "ddp", "adamw", "auto", "local")
    assert cfg.hydra.sweeper.params == {"strategy": "ddp,zero1,zero2,zero3",
                                        "optimizer": "adamw,sgd_momentum"}


def test_gpt3_shapes(compose_cfg):
    shapes = {o: to_object(compose_cfg(f"model={o}")).model for o in
              ("gpt_125m", "gpt_350m", "gpt_760m", "gpt_1_3b", "gpt_2_7b", "gpt_6_7b", "gpt_13b")}
    assert [(m.n_layers, m.d_model, m.n_heads) for m in shapes.values()] == [
        (12, 768, 12), (24, 1024, 16), (24, 1536, 16), (24, 2048, 16), (32, 2560, 32),
        (32, 4096, 32), (40, 5120, 40)]
    assert {(m.seq_len, m.vocab_size) for m in shapes.values()} == {(2048, 50304)}


@pytest.mark.parametrize("override,named", [
    ("model.d_modle=3", "d_modle"),
    ("strategy.bucket=1", "bucket"),
    ("+optimizer.nesterov=true", "nesterov"),
    ("strategy=zero9", "zero9"),
    ("model.n_layers=many", "n_layers"),
])
def test_unknown_keys_and_wrong_types_are_rejected_by_name(compose_cfg, override, named):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigError)) as err:
        to_object(compose_cfg(override))  # `+key=...` composes; the typed schema refuses it
    assert named in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override,message", [
    ("strategy.zero_stage=5", "strategy.zero_stage=5 is not allowed; choose one of [0, 1, 2, 3]"),
    ("optimizer.name=rmsprop", "optimizer.name='rmsprop' is not allowed"),
    ("optimizer.scheduler=cosine", "optimizer.scheduler='cosine' is not allowed"),
    ("optimizer.momentum=1.5", "optimizer.momentum=1.5 must be in [0, 1)"),
    ("optimizer.lr=-1", "optimizer.lr=-1.0 must be > 0"),
    ("precision.name=fp8", "precision.name='fp8' is not allowed"),
    ("model.n_heads=5", "model.d_model=64 must divide by model.n_heads=5"),
    ("train.timed_steps=0", "train.timed_steps=0 must be > 0"),
    ("train.fault=segv", "train.fault='segv' is not allowed"),
    ("strategy=ddp strategy.offload_optimizer=true", "strategy.offload_optimizer=true needs"),
    ("cluster.accelerator=tpu", "cluster.accelerator='tpu' is not allowed"),
    ("cluster.host_memory_gb=0", "cluster.host_memory_gb=0.0 must be > 0"),
    ("cluster.gpu_memory_gb=-80", "cluster.gpu_memory_gb=-80.0 must be > 0"),
])
def test_out_of_range_values_fail_naming_field_and_allowed_values(compose_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        to_object(compose_cfg(*override.split()))
    assert message in str(err.value)


def _float_fields():
    """(schema, group, field, kind) of every float field of every group's schema: a float,
    an optional float, or a list or mapping of floats; found from the type hints, so a float
    field added later is walked too."""
    import typing
    from dataclasses import fields

    from suite.config import SuiteConfig

    def kind(hint):
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is float:
            return "scalar"
        if origin is typing.Union and float in args:
            return "scalar"
        if origin in (list, typing.List) and args and kind(args[0]) == "scalar":
            return "list"
        if origin in (dict, typing.Dict) and args and kind(args[1]) == "scalar":
            return "dict"
        return None

    found = []
    for group in fields(SuiteConfig):
        schema = group.default_factory
        for name, hint in typing.get_type_hints(schema).items():
            if kind(hint):
                found.append((schema, group.name, name, kind(hint)))
    return found


FLOAT_FIELDS = _float_fields()


def test_the_walk_finds_the_float_fields_of_every_schema():
    names = {f"{g}.{n}" for _, g, n, _ in FLOAT_FIELDS}
    assert {"optimizer.lr", "optimizer.eps", "optimizer.betas", "optimizer.weight_decay",
            "optimizer.momentum", "optimizer.gradient_clipping", "precision.loss_scale",
            "model.rope_theta", "model.norm_eps", "cluster.gpu_memory_gb", "cluster.host_memory_gb",
            "train.fault_slowdown", "train.step_timeout_s", "report.min_drop",
            "report.memory_ratio_bounds", "report.otava_max_pvalue"} <= names


@pytest.mark.parametrize("schema,group,name,kind", FLOAT_FIELDS,
                         ids=[f"{g}.{n}" for _, g, n, _ in FLOAT_FIELDS])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_every_float_field_of_every_schema_refuses_nan_and_inf(schema, group, name, kind, bad):
    """`x > 0` is False for NaN, so a range check alone lets it through: each is refused by
    name, wherever it sits (a list's item, a mapping's value)."""
    default = getattr(schema(), name)
    if kind == "list":  # one bad item among good ones
        value = list(default) if default else [1.0]
        value[-1] = bad
    elif kind == "dict":
        value = {**(default or {}), "x": bad}
    else:
        value = bad
    with pytest.raises(ConfigError) as err:
        schema(**{name: value})
    assert f"{group}.{name}" in str(err.value) and "not a finite number" in str(err.value), str(err.value)


@pytest.mark.parametrize("override,named", [
    ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),
    ("optimizer.lr=inf", "optimizer.lr=inf is not a finite number"),
    ("optimizer.eps=-inf", "optimizer.eps=-inf is not a finite number"),
    ("optimizer.weight_decay=NaN", "optimizer.weight_decay=nan is not a finite number"),
    ("optimizer.betas=[0.9,nan]", "optimizer.betas[1]=nan is not a finite number"),
    ("precision.loss_scale=inf", "precision.loss_scale=inf is not a finite number"),
    ("cluster.host_memory_gb=inf", "cluster.host_memory_gb=inf is not a finite number"),
    ("train.step_timeout_s=nan", "train.step_timeout_s=nan is not a finite number"),
    ("report.memory_ratio_bounds=[0.9,inf]", "report.memory_ratio_bounds[1]=inf is not a finite number"),
    ("model.rope_theta=1e400", "model.rope_theta=inf is not a finite number"),  # overflows to inf
])
def test_hydra_parses_nan_and_inf_overrides_to_floats_that_are_refused(compose_cfg, override, named):
    with pytest.raises(ConfigError) as err:
        to_object(compose_cfg(override))
    assert named in str(err.value)
