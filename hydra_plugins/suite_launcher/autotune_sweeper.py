"""`experiment=autotune` (hydra.sweeper.autotune set): the suite's sweeper searches instead of
running a grid. It plans every
point of `hydra.sweeper.autotune.space` (strategy, micro-batch, activation checkpointing, ... with the
command line's overrides fixed), leaves out what the plan refuses and what the memory model says
will not fit (running the few nearest the limit, short, to check the model), then runs successive
halving through the suite's own launcher: short runs for every candidate, the best go on, the
finalists run at full length. So it works wherever a sweep works (locally, Slurm job arrays; no
hostfile, no ssh). It writes autotune.json in the sweep folder; the report's Autotune section
shows it. The search's rules are pure functions in suite/autotune.py."""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)

SUMMARY_FILE = "autotune.json"


@dataclass
class AutotuneSettings:
    """hydra.sweeper.autotune: with it set, the sweeper searches this space instead of sweeping."""
    #: override key -> comma-separated values: the space searched (dotted keys, as in
    #: hydra.sweeper.params; nested mappings from the command line are flattened)
    space: Dict[str, Any] = field(default_factory=dict)
    #: timed steps of the short rungs, in order; the finalists run train.timed_steps
    rung_steps: List[int] = field(default_factory=lambda: [3])
    #: successive halving's eta: the best 1/eta of a rung go on
    reduction_factor: int = 3
    #: how many run at full length (2: the winner's margin is measured, not extrapolated)
    finalists: int = 2
    #: points ruled out by memory that run anyway (short), nearest the limit first
    boundary_checks: int = 1


class AutotuneSearch:
    """One search: `run(arguments)` with the sweeper's launcher, config and Hydra context."""

    def __init__(self, settings: Any, launcher: Any, config: Any, hydra_context: Any) -> None:
        self.space, self.rung_steps = flat_space(settings.space or {}), list(settings.rung_steps)
        self.reduction_factor, self.finalists = settings.reduction_factor, settings.finalists
        self.boundary_checks = settings.boundary_checks
        self.launcher, self.config, self.hydra_context = launcher, config, hydra_context
        self.job_idx = 0

    # ---- the search --------------------------------------------------------------------------

    def run(self, arguments: List[str]) -> Any:
        from suite import autotune

        fixed = self._fixed(arguments)
        self._check_settings()
        points = autotune.space_points(self.space)
        log.info(f"Autotune: {len(points)} points in the space {self.space}")
        self._classify(points, fixed)
        candidates = [p for p in points if p.outcome is None]
        boundary = autotune.boundary_points([p for p in points if p.outcome == autotune.MEMORY],
                                            self.boundary_checks)
        for p in boundary:
            p.outcome = autotune.BOUNDARY
        if not candidates:
            self._write(points)
            from hydra_plugins.suite_launcher.suite_launcher import SweepRefused

            raise SweepRefused("Autotune: no point of the space can run (see autotune.json):\n"
                               + "\n".join(f"  {p.label}: {p.reason}" for p in points))
        if bool(self.config.submit.dry_run):  # nothing is measured: only the first rung can be shown
            self._run_rung(candidates + boundary, fixed, self.rung_steps[0] if self.rung_steps else None,
                           final=not self.rung_steps)
            log.info(f"Autotune dry run: the first rung's {len(candidates) + len(boundary)} runs are printed "
                     f"above ({len(points) - len(candidates) - len(boundary)} points left out before it, "
                     "autotune.json says why); the later rungs depend on their measurements")
            self._write(points)
            return None
        short = list(self.rung_steps)
        first = True
        while short and len(candidates) > self.finalists:
            steps = short.pop(0)
            self._run_rung(candidates + (boundary if first else []), fixed, steps, final=False)
            first = False
            keep = autotune.next_rung_size(len(candidates), self.reduction_factor, self.finalists)
            going_on = autotune.promote(candidates, keep)
            for p in candidates:
                if p not in going_on:
                    ok = p.last_value() is not None
                    p.outcome = autotune.HALVED if ok else autotune.FAILED
                    p.reason = (f"{p.last_value():,.0f} tokens/s/device in {steps} steps: not among "
                                f"the best {keep}" if ok else f"its {steps}-step run ended {p.runs[-1]['status']}")
            candidates = going_on
        if first and boundary:  # no short rung ran: the boundary checks run short on their own
            self._run_rung(boundary, fixed, self.rung_steps[0] if self.rung_steps else None, final=False)
        self._run_rung(candidates, fixed, None, final=True)
        for p in candidates:
            p.outcome = autotune.FINALIST if p.last_value() is not None else autotune.FAILED
        for p in boundary:
            run = p.runs[-1] if p.runs else {}
            p.reason = (f"{p.reason}; ran anyway to check the model: {run.get('status')}, measured peak "
                        f"{_gib(run.get('peak_memory_bytes'))} against {_gib(p.required_bytes)} predicted")
        summary = self._write(points)
        log.info(f"Autotune: best {summary['best']} ({summary['runs']} runs, "
                 f"{summary['run_seconds']:.0f} run-seconds)")
        return None

    def _fixed(self, arguments: List[str]) -> List[str]:
        """The command line's overrides: fixed for every point (the space is the sweeper's)."""
        from hydra_plugins.suite_launcher.suite_launcher import SweepRefused

        parsed = OverridesParser.create().parse_overrides(arguments)
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise SweepRefused(f"experiment=autotune searches hydra.sweeper.autotune.space; a sweep on the command "
                               f"line ({', '.join(sweeps)}) is not allowed. Set the space instead, e.g. "
                               f"\"hydra.sweeper.autotune.space.strategy='ddp,zero3'\" (quoted: a value, not a sweep). "
                               f"Nothing was started.")
        return [o.input_line for o in parsed]

    def _check_settings(self) -> None:
        from hydra_plugins.suite_launcher.suite_launcher import SweepRefused

        problems = []
        if not self.space:
            problems.append("hydra.sweeper.autotune.space is empty: name the axes to search")
        if self.reduction_factor < 2:
            problems.append(f"hydra.sweeper.autotune.reduction_factor={self.reduction_factor} must be at least 2")
        if self.finalists < 1:
            problems.append(f"hydra.sweeper.autotune.finalists={self.finalists} must be at least 1")
        if any(s < 1 for s in self.rung_steps):
            problems.append(f"hydra.sweeper.autotune.rung_steps={self.rung_steps}: every rung needs at least 1 timed step")
        if self.boundary_checks < 0:
            problems.append(f"hydra.sweeper.autotune.boundary_checks={self.boundary_checks} must be 0 or more")
        if problems:
            raise SweepRefused("Autotune settings refused, nothing was started:\n  " + "\n  ".join(problems))

    def _classify(self, points: List[Any], fixed: List[str]) -> None:
        """Plan every point: the plan's refusals are INVALID, the memory model's MEMORY."""
        from hydra_plugins.suite_launcher.compose import FastComposer
        from suite import autotune, plan as planning
        from suite.config import ConfigError

        composer = FastComposer(self.hydra_context.config_loader, self.config)
        gpus = None
        for p in points:
            try:
                cfg, _ = composer.compose(fixed + p.overrides, 0)
                typed = planning.to_object(cfg)
                if gpus is None:
                    gpus = self.launcher._local_gpus(typed)
                plan = planning.plan_run(typed, gpus, check_memory=False)
            except (ConfigError, ValueError) as exc:
                p.outcome, p.reason = autotune.INVALID, str(exc)
                continue
            need = planning.memory_need(typed, plan)
            p.required_bytes, p.available_bytes = need.required_bytes, need.available_bytes
            if need.problem:
                p.outcome, p.reason = autotune.MEMORY, need.problem

    def _run_rung(self, points: List[Any], fixed: List[str], steps: Optional[int], final: bool) -> None:
        """One batch through the launcher; each point's run is appended to its `runs`."""
        from suite import autotune, results

        extra = [] if steps is None else [f"train.timed_steps={steps}"]
        # a short rung's runs may be refused by the memory check like any run: the boundary
        # checks are meant to run, so their memory check is waived (submit.try_anyway)
        overrides = [fixed + p.overrides + extra
                     + (["submit.try_anyway=true"] if p.outcome == autotune.BOUNDARY else [])
                     for p in points]
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(overrides)
        for p, ret in zip(points, returns):
            path = Path(str(ret.working_dir)) / results.RESULT_FILE
            record = results.read_record(path) if path.exists() else {"status": ret.return_value, "metrics": {}}
            m = record.get("metrics") or {}
            p.runs.append({"run_id": record.get("run_id"), "final": final, "status": record.get("status"),
                           "timed_steps": steps, "error": record.get("error"), "measured_steps": m.get("timed_steps"),
                           **{k: m.get(k) for k in ("tokens_per_s_per_device", "step_time_cv", "run_wall_s",
                                                    "peak_memory_bytes", "memory_predicted_bytes")}})

    def _write(self, points: List[Any]) -> dict:
        from suite import autotune

        settings = {"space": self.space, "rung_steps": self.rung_steps, "reduction_factor": self.reduction_factor,
                    "finalists": self.finalists, "boundary_checks": self.boundary_checks}
        summary = autotune.summary(points, settings)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
        return summary


def flat_space(space: Any) -> Dict[str, str]:
    """{override key: values}: `train.micro_batch_size: 1,2` as written in a config file, or
    nested as a command line makes it (hydra.sweeper.autotune.space.train.micro_batch_size='1,2');
    a nested key given later wins over the same key written flat."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(space, resolve=True) if OmegaConf.is_config(space) else dict(space)
    flat: Dict[str, str] = {}
    nested: Dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            else:
                (nested if prefix else flat)[name] = ",".join(map(str, value)) if isinstance(value, list) else str(value)

    walk("", plain)
    return {**flat, **nested}


def _gib(value: Optional[float]) -> str:
    return "?" if value is None else f"{value / 2 ** 30:.2f} GiB"
