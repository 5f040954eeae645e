"""Fast composition of a sweep point's config, for planning thousands of points: Hydra composes
once per distinct set of group choices and Hydra settings (~0.2 s each), and value overrides
(`train.seed=3`, `+a.b=1`, `++a.b=1`, `~a.b`) are applied to a copy of the plain values as Hydra
applies them (~0.1 ms). tests/test_compose.py checks it against Hydra's own composition."""
from __future__ import annotations

import re
from typing import Any, Dict, Sequence, Tuple

from omegaconf import OmegaConf


class FastComposer:
    """`compose(overrides, job_num)` -> (the config without `hydra` as plain values, the run's
    folder name); what Hydra's load_sweep_config gives the job, resolved."""

    def __init__(self, config_loader: Any, master_config: Any) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.loader, self.master = config_loader, master_config
        self.parser = OverridesParser.create()
        self.parsed: Dict[str, Tuple[Any, bool]] = {}   # line -> (override, composed by Hydra?)
        self.bodies: Dict[tuple, Tuple[dict, str]] = {}  # Hydra-composed part -> (body, subdir)

    def _parse(self, line: str) -> Tuple[Any, bool]:
        if line not in self.parsed:
            o = self.parser.parse_overrides([line])[0]
            # group choices, Hydra's own settings, and mapping values (OmegaConf merges those
            # into the node under struct rules, which plain assignment would not reproduce)
            by_hydra = (o.package is not None or o.key_or_group.startswith("hydra")
                        or self.loader.repository.group_exists(o.key_or_group)
                        or isinstance(o.value(), dict))
            self.parsed[line] = (o, by_hydra)
        return self.parsed[line]

    def compose(self, overrides: Sequence[str], job_num: int) -> Tuple[Dict[str, Any], str]:
        parsed = [self._parse(line) for line in overrides]
        key = tuple(o.input_line for o, by_hydra in parsed if by_hydra)
        if key not in self.bodies:
            full = self.loader.load_sweep_config(self.master, list(key))
            subdir = str(OmegaConf.to_container(full.hydra.sweep, resolve=False)["subdir"])
            body = {k: OmegaConf.to_container(full[k], resolve=True) if OmegaConf.is_config(full[k]) else full[k]
                    for k in full if k != "hydra"}
            self.bodies[key] = (body, subdir)
        body, subdir = self.bodies[key]
        config = dict(body)
        values = [o for o, by_hydra in parsed if not by_hydra]
        for override in values:
            apply_override(config, override)
        if any("${" in str(o.value()) for o in values):  # e.g. ${oc.env:HF_TOKEN}: as the job will
            config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
        return config, interpolate(subdir, {**config, "hydra": {"job": {"num": job_num}}})


def apply_override(config: dict, override: Any) -> None:
    """One Hydra value override (`a.b=1`, `+a.c=2`, `++a.d=3`, `~a.b`) on plain values."""
    from suite.config import ConfigError

    *parents, leaf = override.key_or_group.split(".")
    node = config
    for name in parents:
        if not isinstance(node.get(name), dict):
            raise ConfigError(f"Could not override '{override.key_or_group}': {name} is not in the config")
        node[name] = dict(node[name])  # copy on write: the composed body is shared by runs
        node = node[name]
    if override.is_delete():
        # as Hydra: a missing or null key does not exist; the schema's nodes allow no deletion
        if node.get(leaf) is None:
            raise ConfigError(f"Could not delete from config. '{override.key_or_group}' does not exist.")
        raise ConfigError(f"Error merging override {override.input_line}: the config's schema "
                          "(suite/config.py) does not support deletion")
    elif leaf in node or override.is_add() or override.is_force_add():
        node[leaf] = override.value()
    else:
        raise ConfigError(f"Could not override '{override.key_or_group}': key '{leaf}' is not in the "
                          f"config (to add it, prepend +)")


def interpolate(template: str, values: dict) -> str:
    """Resolve `${a.b}` references (the folder-name template) against plain values."""
    def lookup(match):
        node = values
        for name in match.group(1).split("."):
            node = node[name]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", lookup, template)
