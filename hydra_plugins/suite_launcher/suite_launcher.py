"""The suite's Hydra launcher, built on hydra-submitit-launcher's. Before anything starts it
plans every run of the sweep (one invalid point refuses the whole sweep), skips runs that
already have an ok record in the sweep folder (resume), orders runs shortest-expected-first and
gives each run the nodes, ranks and GPUs its own config asks for. Then:
- cluster.scheduler=local: runs one at a time through submitit's local executor (side by side
  they would disturb each other's timings);
- cluster.scheduler=slurm: one job array per set of equal resources through sbatch, then waits
  (or, with submit.wait=false, prints the job ids and returns).
A run that ends without a record gets one, from Slurm's accounting where there is one.
"""
import atexit
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class SuiteLauncherConf:
    _target_: str = "hydra_plugins.suite_launcher.suite_launcher.SuiteLauncher"
    #: where submitit keeps its pickles and each job's logs (%j: the job id)
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"


ConfigStore.instance().store(group="hydra/launcher", name="suite", node=SuiteLauncherConf,
                             provider="suite")


def _apply_override(config: dict, override: Any) -> None:
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
        node.pop(leaf, None)
    elif leaf in node or override.is_add() or override.is_force_add():
        node[leaf] = override.value()
    else:
        raise ConfigError(f"Could not override '{override.key_or_group}': key '{leaf}' is not in the "
                          f"config (to add it, prepend +)")


def _interpolate(template: str, values: dict) -> str:
    """Resolve `${a.b}` references (the folder-name template) against plain values."""
    import re

    def lookup(match):
        node = values
        for name in match.group(1).split("."):
            node = node[name]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", lookup, template)


class SweepRefused(SystemExit):
    """The sweep cannot run as asked; nothing was started."""


@dataclass
class PlannedRun:
    idx: int
    overrides: List[str]
    typed: Any            # suite.config.SuiteConfig
    plan: Any             # suite.plan.RunPlan
    run_dir: Path
    config: Dict[str, Any]
    config_hash: str
    cost: float

    @property
    def label(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(defaults)"


class SharedLauncher:
    """What submitit pickles for each run: a path. The launcher and Hydra's state (config
    store, plugins; ~90 KB) are pickled once per submission into that file instead of deep-copied
    and pickled for every task (~23 ms per task: 23 s of a 1,000-run submission); the job loads
    them and calls the launcher as hydra-submitit-launcher would."""

    def __init__(self, launcher: "SuiteLauncher", folder: Path) -> None:
        from submitit.core.utils import cloudpickle_dump

        # one file per submission: jobs of an earlier one (a resumed sweep) keep their own
        self.path = str(Path(folder) / f"launcher_{uuid.uuid4().hex[:12]}.pkl")
        Path(folder).mkdir(parents=True, exist_ok=True)
        cloudpickle_dump((launcher, Singleton.get_state()), self.path)

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str) -> JobReturn:
        import pickle

        with open(self.path, "rb") as f:
            launcher, singleton_state = pickle.load(f)
        returned = launcher(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        atexit.register(_leave_without_teardown)
        return returned

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue (preemption): the same run again."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _leave_without_teardown() -> None:
    """At exit of a task that finished: once submitit has saved its success, leave with
    os._exit(0). Gloo's worker threads can abort the interpreter's teardown after a correct run
    ("terminate called without an active exception", about 1 run in 30: docs/behaviour.md), and Slurm
    then calls the job FAILED. Without a saved success the normal exit (and status) stands."""
    import submitit

    try:
        saved = submitit.JobEnvironment().paths.result_pickle.exists()
    except Exception:  # not inside a submitit job
        return
    if saved:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _describe_array(array: List[PlannedRun], params: Dict[str, Any]) -> str:
    """What an array asks Slurm for, in the words of the config fields."""
    asked = ", ".join(f"{k}={params[k]}" for k in ("nodes", "ntasks_per_node", "gpus_per_node",
                                                  "cpus_per_task", "mem", "partition", "time")
                      if k in params)
    first = array[0]
    return (f"the job array of {len(array)} run(s) like #{first.idx} ({first.label}), asking for "
            f"{asked} (cluster={first.typed.cluster.name}: cluster.nodes, cluster.gpus_per_node, "
            "cluster.cpus_per_task, cluster.mem_gb, cluster.partition, cluster.timeout_min)")


def _returned(run: PlannedRun, value: str) -> JobReturn:
    # COMPLETED even for a failed run: Hydra aborts the sweep on a FAILED return, before the
    # report. Whether every run succeeded is decided from the records (suite.sweep).
    ret = JobReturn(overrides=run.overrides, status=JobStatus.COMPLETED, _return_value=value)
    ret.working_dir = str(run.run_dir)
    return ret


class SuiteLauncher(BaseSubmititLauncher):
    _EXECUTOR = "suite"

    def _compose(self, overrides: Sequence[str], idx: int, cache: Dict[Any, Any]) -> Tuple[dict, str]:
        """The benchmark part of the run's config as plain values, and its folder name: what
        Hydra's load_sweep_config composes in the job, but composed once per distinct set of
        group choices and Hydra settings (~0.2 s each); the value overrides (`train.seed=3`)
        are applied to a copy as Hydra applies them (~0.1 ms)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        loader = self.hydra_context.config_loader
        if "parser" not in cache:
            cache["parser"] = OverridesParser.create()
        for line in overrides:
            if ("override", line) not in cache:
                o = cache["parser"].parse_overrides([line])[0]
                cache[("override", line)] = (o, o.package is not None or o.key_or_group.startswith("hydra")
                                             or loader.repository.group_exists(o.key_or_group))
        parsed, shared = zip(*(cache[("override", line)] for line in overrides)) if overrides else ((), ())
        key = tuple(o.input_line for o, s in zip(parsed, shared) if s)
        if key not in cache:
            full = loader.load_sweep_config(self.config, list(key))
            subdir = str(OmegaConf.to_container(full.hydra.sweep, resolve=False)["subdir"])
            body = {k: OmegaConf.to_container(full[k], resolve=True) if OmegaConf.is_config(full[k]) else full[k]
                    for k in full if k != "hydra"}
            cache[key] = (body, subdir)
        body, subdir = cache[key]
        config = dict(body)
        values = [o for o, s in zip(parsed, shared) if not s]
        for override in values:
            _apply_override(config, override)
        if any("${" in str(o.value()) for o in values):  # e.g. ${oc.env:HF_TOKEN}: as the job will
            config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
        return config, _interpolate(subdir, {**config, "hydra": {"job": {"num": idx}}})

    def _plan_all(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[PlannedRun]:
        from suite import plan as planning, results
        from suite.config import ConfigError

        started = time.perf_counter()
        gpu_count: List[int] = []

        def local_gpus(typed) -> int:
            if not planning.needs_local_gpus(typed):
                return 0
            if not gpu_count:
                import torch

                gpu_count.append(torch.cuda.device_count())
            return gpu_count[0]

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        submit = planning.to_object(self.config).submit
        if submit.repeats > 1:  # each configuration k times, as separate jobs
            job_overrides = [list(o) + [f"train.repeat_index={i}"]
                             for o in job_overrides for i in range(submit.repeats)]
        runs, problems, composed, first_of = [], [], {}, {}
        self.duplicates: Dict[int, Tuple[PlannedRun, int]] = {}
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            try:
                cfg, subdir = self._compose(overrides, idx, composed)
            except Exception as exc:  # Hydra's own refusals: unknown keys, bad syntax
                problems.append(f"  #{idx} {' '.join(filter_overrides(overrides))}: {exc}")
                continue
            try:
                typed = planning.to_object(cfg)
                plan = planning.plan_run(typed, local_gpus(typed))
            except (ConfigError, ValueError) as exc:
                problems.append(f"  #{idx} {' '.join(filter_overrides(overrides))}: {exc}")
                if submit.skip_invalid and not submit.dry_run:
                    config = {k: v for k, v in cfg.items() if k not in ("submit", "report")}
                    results.write_invalid_record(sweep_dir / subdir, results.redact("config", config), str(exc))
                continue
            config = results.run_config(typed, plan)
            run = PlannedRun(idx, list(overrides), typed, plan, sweep_dir / subdir, config,
                             results.config_hash(config), planning.estimated_cost(typed, plan))
            if run.config_hash in first_of:  # measures what an earlier point measures
                self.duplicates[idx] = (run, first_of[run.config_hash])
                continue
            first_of[run.config_hash] = idx
            runs.append(run)
        if problems and not submit.skip_invalid:
            raise SweepRefused("The sweep was refused, nothing was started. Invalid points:\n"
                               + "\n".join(problems) + "\n(submit.skip_invalid=true records "
                               "them as `invalid` and runs the rest)")
        if problems:
            log.warning(f"{len(problems)} invalid points recorded as `invalid`:\n" + "\n".join(problems))
        log.info(f"Planned {len(job_overrides)} points in {time.perf_counter() - started:.2f} s")
        if self.duplicates:
            log.info(f"{len(self.duplicates)} points measure the same as an earlier point (a micro-"
                     "benchmark does not depend on the model, strategy or optimizer): run once")
        if not runs:
            raise SweepRefused("No valid point in the sweep; nothing was started.")
        schedulers = {r.typed.cluster.scheduler for r in runs}
        if len(schedulers) > 1:
            raise SweepRefused(f"The sweep mixes cluster.scheduler values {sorted(schedulers)}; "
                               "one sweep goes to one scheduler. Nothing was started.")
        if "local" in schedulers and not runs[0].typed.submit.wait:
            raise SweepRefused("submit.wait=false needs cluster.scheduler=slurm (local runs live "
                               "only as long as the sweep command). Nothing was started.")
        return runs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from suite import plan as planning
        from suite.report.collate import ok_config_hashes

        runs = self._plan_all(job_overrides, initial_job_idx)
        submit, scheduler = runs[0].typed.submit, runs[0].typed.cluster.scheduler
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        done = {} if submit.force else ok_config_hashes(sweep_dir)
        todo = [r for r in runs if r.config_hash not in done]
        returns = {r.idx: _returned(r, "ok") for r in runs if r.config_hash in done}
        if returns:
            log.info(f"Resume: {len(returns)} of {len(runs)} runs already have an ok record in "
                     f"{sweep_dir}; running the other {len(todo)} (submit.force=true runs all)")
        if scheduler == "slurm":
            keys = [json.dumps(planning.slurm_parameters(r.typed, r.plan), sort_keys=True) for r in todo]
        else:
            keys = ["local"] * len(todo)
        arrays = [[todo[i] for i in group] for group in
                  planning.group_into_arrays([(k, r.cost) for k, r in zip(keys, todo)])]

        if submit.dry_run:
            self._print_dry_run(arrays, scheduler, sweep_dir)
            returns.update({r.idx: _returned(r, "dry-run") for r in todo})
        elif todo:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            run = self._run_local if scheduler == "local" else self._run_slurm
            returns.update(run(arrays, sweep_dir, submit.wait))
        for idx, (duplicate, first) in self.duplicates.items():
            returns[idx] = _returned(duplicate, returns[first].return_value)
            returns[idx].working_dir = returns[first].working_dir
        return [returns[idx] for idx in sorted(returns)]

    @staticmethod
    def _job_args(run: PlannedRun) -> tuple:
        return (run.overrides, "hydra.sweep.dir", run.idx, f"job_id_for_{run.idx}")

    def _record_submission(self, run: PlannedRun, scheduler: str, job_id: Optional[str]) -> None:
        """submission.json: written before the job starts (its ranks read their plan there),
        and again with the job id once the scheduler gave one."""
        from suite import results

        results.write_submission(run.run_dir, run_id=f"{run.run_dir.parent.name}/{run.run_dir.name}",
                                 sweep_id=run.run_dir.parent.name, config=run.config,
                                 axes=results.record_axes(run.typed, run.plan),
                                 plan=run.plan.to_dict(), scheduler=scheduler, job_id=job_id)

    def _run_local(self, arrays: List[List[PlannedRun]], sweep_dir: Path, wait: bool) -> Dict[int, JobReturn]:
        import submitit

        runs = [r for array in arrays for r in array]
        log.info(f"Sweep folder: {sweep_dir} ({len(runs)} runs, one at a time)")
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"])
        job_function = SharedLauncher(self, sweep_dir / ".submitit")
        returns = {}
        for run in runs:
            log.info(f"\t#{run.idx} : {run.label} ({run.plan.world_size} ranks, {run.plan.accelerator})")
            executor.update_parameters(
                tasks_per_node=run.plan.ranks_per_node,
                gpus_per_node=run.plan.ranks_per_node if run.plan.accelerator == "cuda" else 0,
                timeout_min=run.typed.cluster.timeout_min, stderr_to_stdout=True)
            self._record_submission(run, "local", None)
            job = executor.submit(job_function, *self._job_args(run))
            self._record_submission(run, "local", str(job.job_id))
            returns[run.idx] = self._outcome(job, run, "local")
        return returns

    def _run_slurm(self, arrays: List[List[PlannedRun]], sweep_dir: Path, wait: bool) -> Dict[int, JobReturn]:
        import submitit
        from suite import plan as planning

        from submitit.core.utils import FailedJobError

        # No requeue on time-out: a benchmark that ran out of time is a `timeout` record.
        executor = submitit.SlurmExecutor(folder=self.params["submitit_folder"], max_num_timeout=0)
        job_function = SharedLauncher(self, sweep_dir / ".submitit")
        self._refuse_what_sbatch_refuses(arrays)
        submitted = []
        for array in arrays:
            params = planning.slurm_parameters(array[0].typed, array[0].plan)
            executor.update_parameters(**params)
            for run in array:
                self._record_submission(run, "slurm", None)
            try:
                jobs = executor.map_array(job_function, *zip(*[self._job_args(r) for r in array]))
            except FailedJobError as exc:
                earlier = sorted({job.job_id.split("_")[0] for _, job in submitted})
                raise SweepRefused(
                    f"sbatch refused {_describe_array(array, params)}:\n  {str(exc).strip()}\n"
                    + (f"Arrays submitted before it: {', '.join(earlier)} (they run; scancel "
                       f"{' '.join(earlier)} to stop them)." if earlier else "Nothing was submitted."))
            for run, job in zip(array, jobs):
                self._record_submission(run, "slurm", str(job.job_id))
                submitted.append((run, job))
            print(f"Submitted array {jobs[0].job_id.split('_')[0]}: {len(array)} runs of "
                  f"{array[0].plan.nodes} node(s) x {array[0].plan.ranks_per_node} ranks", flush=True)
        print(f"Sweep folder: {sweep_dir}", flush=True)
        if not wait:
            print(f"Not waiting (submit.wait=false). When the jobs have ended:\n"
                  f"  python -m suite.report {sweep_dir}", flush=True)
            return {run.idx: _returned(run, "submitted") for run, _ in submitted}
        return {run.idx: self._outcome(job, run, "slurm") for run, job in submitted}

    def _refuse_what_sbatch_refuses(self, arrays: List[List[PlannedRun]]) -> None:
        """Ask Slurm (sbatch --test-only) whether it would take each array before submitting
        any, so that a request the cluster cannot meet (more nodes or GPUs than it has) is one
        clear message and no half-submitted sweep."""
        from suite import collect, plan as planning

        folder = str(Path(self.params["submitit_folder"]).absolute())
        for array in arrays:
            params = planning.slurm_parameters(array[0].typed, array[0].plan)
            reason = collect.sbatch_refusal(planning.sbatch_script(params, folder, len(array), sys.executable))
            if reason is not None:
                raise SweepRefused(f"sbatch refused {_describe_array(array, params)}:\n  {reason}\n"
                                   "Nothing was submitted.")

    def _outcome(self, job: Any, run: PlannedRun, scheduler: str) -> JobReturn:
        """Wait for the job; if the run left no record, write one (from sacct on Slurm)."""
        from suite import collect, results

        error = "the run ended without writing a record"
        while not job.done():
            time.sleep(0.25)
        if not (run.run_dir / results.RESULT_FILE).exists():
            try:  # submitit's account of it (for a failed task it waits ~15 s for its pickle)
                job.results()
            except Exception as exc:  # a failed rank, a time-out, a cancellation
                error = f"{type(exc).__name__}: {str(exc)[-2000:]}"
        if not (run.run_dir / results.RESULT_FILE).exists():
            status, details = "error", {}
            if scheduler == "slurm":
                state = collect.sacct_states([str(job.job_id)]).get(str(job.job_id))
                if state is not None:
                    status = collect.status_from_slurm(state.state) or "error"
                    details = {"slurm_state": state.state, "elapsed": state.elapsed,
                               "exit_code": state.exit_code}
            results.write_record_from_submission(run.run_dir, status=status, error=error,
                                                 details=details)
        return _returned(run, results.read_record(run.run_dir / results.RESULT_FILE)["status"])

    def _print_dry_run(self, arrays: List[List[PlannedRun]], scheduler: str, sweep_dir: Path) -> None:
        from suite import plan as planning

        n = sum(len(a) for a in arrays)
        print(f"Dry run: {n} runs would start ({scheduler}), shortest expected first; nothing "
              f"was submitted.\nSweep folder: {sweep_dir}\n")
        for k, array in enumerate(arrays):
            head = array[0]
            if scheduler == "slurm":
                params = planning.slurm_parameters(head.typed, head.plan)
                folder = str(Path(self.params["submitit_folder"]).absolute())
                print(f"=== job array {k}: {len(array)} runs, sbatch script:")
                print(planning.sbatch_script(params, folder, len(array), sys.executable))
            for task, run in enumerate(array):
                p = run.plan
                print(f"  [{k}:{task}] #{run.idx} model={run.typed.model.name} "
                      f"strategy={run.typed.strategy.name} optimizer={run.typed.optimizer.name} "
                      f"precision={p.precision} nodes={p.nodes} "
                      f"ranks_per_node={p.ranks_per_node} world_size={p.world_size} "
                      f"global_batch={p.global_batch_size} ({run.label})")
                if p.compiled_ops:
                    print(f"      compiles DeepSpeed ops unless prebuilt: "
                          f"{', '.join(name for name, _ in p.compiled_ops)}")
            print()
