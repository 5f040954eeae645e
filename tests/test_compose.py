"""The launcher's fast composition gives the config Hydra's own composition gives the job,
for every experiment file and a set of overrides of every kind (group choice, value, +, ++,
interpolation), and what Hydra refuses (a missing key, a deletion) is refused too."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF

EXPERIMENTS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))
OVERRIDES = [
    [],
    ["strategy=zero3", "optimizer=sgd_momentum"],           # group choices
    ["train.seed=7", "model.n_layers=3"],                     # values
    ["+train.extra_note=hello"],                              # add a key (refused later by the schema)
    ["++cluster.timeout_min=5", "++report.extra=1"],          # force-add: existing and new
    ["cluster.env={NCCL_DEBUG:WARN}", "optimizer.betas=[0.8,0.9]"],  # dict and list values
    ["+cluster.env.NCCL_DEBUG=WARN"],
    ["train.seed=${train.repeat_index}"],                     # interpolation in a value
    ["model=gpt_125m", "train.micro_batch_size=3", "precision=bf16"],
]


def _hydra(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=overrides, return_hydra_config=True)
    body = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    return body, subdir


@pytest.fixture(scope="module")
def composer():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    from hydra_plugins.suite_launcher.compose import FastComposer

    GlobalHydra.instance().clear()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = loader.load_configuration("sweep", overrides=[], run_mode=__import__("hydra").types.RunMode.MULTIRUN)
    return FastComposer(loader, master)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: " ".join(o) or "none")
def test_fast_composition_matches_hydra(composer, experiment, overrides):
    lines = [f"experiment={experiment}", *overrides]
    try:
        expected, template = _hydra(lines)
    except Exception:  # e.g. a mapping merged into a struct node: refused by both
        with pytest.raises(Exception):
            composer.compose(lines, job_num=4)
        return
    fast, subdir = composer.compose(lines, job_num=4)
    assert fast == expected
    assert subdir.startswith("4_") and "${" not in subdir and template.startswith("${hydra.job.num}_")


@pytest.mark.parametrize("line,message", [("train.no_such_key=1", "train.no_such_key"),
                                          ("~data.path", "Could not delete from config. 'data.path'"),
                                          ("~report.memory_ratio_bounds",
                                           "Error merging override ~report.memory_ratio_bounds")])
def test_what_hydra_refuses_the_fast_composition_refuses(composer, line, message):
    with pytest.raises(Exception, match=message):
        _hydra([line])
    with pytest.raises(Exception, match=message):
        composer.compose([line], job_num=0)
