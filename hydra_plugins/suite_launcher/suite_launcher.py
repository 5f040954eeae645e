"""The suite's Hydra launcher, built on hydra-submitit-launcher's: plan every point of the
sweep (one invalid point refuses the whole sweep), skip runs that already have an ok record in
the sweep folder (resume), submit the rest to the run's scheduler (suite/schedulers: one group per
set of equal resources, shortest expected first), then wait and make sure every run ends with a
record (from the scheduler's account when the run wrote none).
"""
import atexit
import logging
import os
import re
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

from suite import models
from suite.schedulers.base import PlannedRun

log = logging.getLogger(__name__)


@dataclass
class SuiteLauncherConf:
    _target_: str = "hydra_plugins.suite_launcher.suite_launcher.SuiteLauncher"
    #: where submitit keeps its pickles and each job's logs (%j: the job id)
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"


ConfigStore.instance().store(group="hydra/launcher", name="suite", node=SuiteLauncherConf,
                             provider="suite")


class SweepRefused(SystemExit):
    """The sweep cannot run as asked; nothing was started."""


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


def _returned(run: PlannedRun, value: str) -> JobReturn:
    # COMPLETED even for a failed run: Hydra aborts the sweep on a FAILED return, before the
    # report. Whether every run succeeded is decided from the records (suite.sweep).
    ret = JobReturn(overrides=run.overrides, status=JobStatus.COMPLETED, _return_value=value)
    ret.working_dir = str(run.run_dir)
    return ret


class SuiteLauncher(BaseSubmititLauncher):
    _EXECUTOR = "suite"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from suite import schedulers
        from suite.results import ok_config_hashes

        runs, duplicates = self._plan_all(job_overrides, initial_job_idx)
        submit = runs[0].typed.submit
        scheduler = schedulers.get(runs[0].typed.cluster.scheduler, self.params["submitit_folder"])
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        done = {} if submit.force else ok_config_hashes(sweep_dir)
        todo = [r for r in runs if r.config_hash not in done]
        returns = {r.idx: _returned(r, "ok") for r in runs if r.config_hash in done}
        if returns:
            log.info(f"Resume: {len(returns)} of {len(runs)} runs already have an ok record in "
                     f"{sweep_dir}; running the other {len(todo)} (submit.force=true runs all)")
        groups = schedulers.group_runs(scheduler, todo)
        if submit.dry_run:
            self._print_dry_run(groups, scheduler, sweep_dir)
            self._ask_in_dry_run(scheduler, groups)
            returns.update({r.idx: _returned(r, "dry-run") for r in todo})
        elif todo:
            from suite.status import redact_label, write_sweep_file

            write_sweep_file(sweep_dir, [{"name": r.run_dir.name, "label": redact_label(r.label)} for r in runs],
                             scheduler.name)
            returns.update(self._submit(scheduler, groups, sweep_dir, submit.wait))
        for idx, (duplicate, first) in duplicates.items():
            returns[idx] = _returned(duplicate, returns[first].return_value)
            returns[idx].working_dir = returns[first].working_dir
        return [returns[idx] for idx in sorted(returns)]

    # ---- planning ---------------------------------------------------------------------------

    def _plan_all(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
                  ) -> Tuple[List[PlannedRun], Dict[int, Tuple[PlannedRun, int]]]:
        """Every point planned; a point that measures what an earlier one measures (a micro-
        benchmark crossed with training axes) is a duplicate of it, not a run of its own."""
        from hydra_plugins.suite_launcher.compose import FastComposer

        started = time.perf_counter()
        from suite import plan as planning
        from suite.config import ConfigError

        try:
            submit = planning.to_object(self.config).submit
        except ConfigError as exc:  # a bad value outside the swept axes: every point has it
            raise SweepRefused(f"The sweep was refused, nothing was started: {exc}") from None
        if submit.repeats > 1:  # each configuration k times, as separate jobs
            job_overrides = [list(o) + [f"train.repeat_index={i}"]
                             for o in job_overrides for i in range(submit.repeats)]
        _warn_of_typed_secrets(job_overrides)
        composer = FastComposer(self.hydra_context.config_loader, self.config)
        if submit.each_node:
            job_overrides = self._on_each_node(composer, job_overrides)
        runs, problems, first_of, duplicates = [], [], {}, {}
        self._short_files = set()  # token files already warned of (fewer samples than a global batch)
        for offset, overrides in enumerate(job_overrides):
            run = self._plan_one(composer, list(overrides), initial_job_idx + offset, submit, problems)
            if run is None:
                continue
            if run.config_hash in first_of:
                duplicates[run.idx] = (run, first_of[run.config_hash])
                continue
            first_of[run.config_hash] = run.idx
            runs.append(run)
        if problems and not submit.skip_invalid:
            raise SweepRefused("The sweep was refused, nothing was started. Invalid points:\n"
                               + "\n".join(problems) + "\n(submit.skip_invalid=true records "
                               "them as `invalid` and runs the rest)")
        if problems:
            log.warning(f"{len(problems)} invalid points recorded as `invalid`:\n" + "\n".join(problems))
        log.info(f"Planned {len(job_overrides)} points in {time.perf_counter() - started:.2f} s")
        if duplicates:
            log.info(f"{len(duplicates)} points measure the same as an earlier point (a micro-"
                     "benchmark does not depend on the model, strategy or optimizer): run once")
        _refuse_mixed_sweeps(runs)
        return runs, duplicates

    def _on_each_node(self, composer, job_overrides: Sequence[Sequence[str]]) -> List[List[str]]:
        """submit.each_node: every 1-node point once per node that is up, placed by name."""
        from suite import schedulers

        expanded, names = [], None
        for overrides in job_overrides:
            cluster = composer.compose(list(overrides), 0)[0]["cluster"]
            if cluster["nodes"] != 1 or cluster["nodelist"] is not None:
                expanded.append(list(overrides))
                continue
            if names is None:
                try:
                    names = schedulers.get(cluster["scheduler"], "").node_names(cluster["partition"])
                except schedulers.SchedulerRefused as exc:
                    raise SweepRefused(f"{exc}; nothing was started.") from None
                if not names:
                    raise SweepRefused("submit.each_node=true: no node is up (partition "
                                       f"{cluster['partition'] or 'default'}); nothing was started.")
                log.info(f"submit.each_node: 1-node points run on each of {len(names)} nodes: {', '.join(names)}")
            expanded += [list(overrides) + [f"cluster.nodelist={name}"] for name in names]
        return expanded

    def _plan_one(self, composer, overrides: List[str], idx: int, submit, problems: List[str]):
        """One point as a PlannedRun, or None with its refusal appended to `problems` (and an
        `invalid` record written with submit.skip_invalid)."""
        from suite import plan as planning, results
        from suite.config import ConfigError

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        from suite.status import redact_overrides

        label = f"  #{idx} {' '.join(redact_overrides(filter_overrides(overrides)))}"
        try:
            cfg, subdir = composer.compose(overrides, idx)
        except Exception as exc:  # Hydra's own refusals: unknown keys, bad syntax
            problems.append(f"{label}: {exc}")
            return None
        try:
            typed = planning.to_object(cfg)
            if not hasattr(self, "_memory_here"):  # this machine's memory, read once per sweep
                from suite.memory import read_local_memory

                self._memory_here = read_local_memory(
                    query_gpus=typed.cluster.scheduler == "local" and bool(gpu_device_files()))
            plan = planning.plan_run(typed, self._local_gpus(typed), local_memory=self._memory_here)
            samples = planning.check_data(typed)  # the one check that reads: a stat of data.path
            warned = self.__dict__.setdefault("_short_files", set())
            if samples is not None and samples < plan.global_batch_size and typed.data.path not in warned:
                warned.add(typed.data.path)
                log.warning(f"data.path={results.redact('data.path', typed.data.path)} holds {samples} samples of "
                            f"model.seq_len={typed.model.seq_len} + 1 tokens, fewer than one global batch "
                            f"({plan.global_batch_size}): samples repeat within a step")
        except (ConfigError, ValueError) as exc:
            problems.append(f"{label}: {exc}")
            if submit.skip_invalid and not submit.dry_run:
                config = {k: v for k, v in cfg.items() if k not in ("submit", "report")}
                results.write_invalid_record(sweep_dir / subdir, results.redact("config", config), str(exc))
            return None
        config = results.run_config(typed, plan)
        return PlannedRun(idx, overrides, typed, plan, sweep_dir / subdir, config,
                          results.config_hash(config), planning.estimated_cost(typed, plan))

    def _local_gpus(self, typed) -> int:
        """GPUs this machine sees, asked only when a run leaves them open (importing torch
        costs ~2 s)."""
        from suite import plan as planning

        if not planning.needs_local_gpus(typed):
            return 0
        if not hasattr(self, "_gpu_count"):
            if not gpu_device_files():
                self._gpu_count = 0  # no GPU driver here: no need to ask torch
            else:
                import torch

                self._gpu_count = torch.cuda.device_count()
        return self._gpu_count

    # ---- submitting and waiting ---------------------------------------------------------------

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
        if job_id is None:  # the engine's config and the command that reruns it by hand
            results.write_reproduction(run.run_dir, run.plan.to_dict(), sys.executable, os.getcwd())

    def _submit(self, scheduler, groups: List[List[PlannedRun]], sweep_dir: Path, wait: bool
                ) -> Dict[int, JobReturn]:
        from suite.schedulers import SchedulerRefused

        if scheduler.name == "local" and not wait:
            raise SweepRefused("submit.wait=false needs cluster.scheduler=slurm (local runs live "
                               "only as long as the sweep command). Nothing was started.")
        try:
            scheduler.check(groups)
        except SchedulerRefused as exc:
            raise SweepRefused(str(exc))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Sweep folder: {sweep_dir} ({sum(map(len, groups))} runs)")
        job_function = SharedLauncher(self, sweep_dir / ".submitit")
        if wait:  # the counts while it waits: a live line on a terminal, log lines otherwise
            from suite.status import Progress

            # on Slurm a poll asks sacct: every 30 s, not every 5 s, to spare the accounting daemon
            with Progress(sweep_dir, every_s=30.0 if scheduler.name == "slurm" else 5.0):
                submitted = self._submit_groups(scheduler, groups, job_function)
                print(f"Sweep folder: {sweep_dir}", flush=True)
                return {run.idx: self._outcome(scheduler, job, run) for run, job in submitted}
        submitted = self._submit_groups(scheduler, groups, job_function)
        print(f"Sweep folder: {sweep_dir}", flush=True)
        print(f"Not waiting (submit.wait=false). Progress: python -m suite.status {sweep_dir}\n"
              f"When the jobs have ended:\n  python -m suite.report {sweep_dir}", flush=True)
        return {run.idx: _returned(run, "submitted") for run, _ in submitted}

    def _submit_groups(self, scheduler, groups: List[List[PlannedRun]], job_function) -> List[tuple]:
        """Each group to the scheduler (a local one runs it before returning); (run, job) pairs."""
        from suite.schedulers import SchedulerRefused

        submitted = []
        for group in groups:
            for run in group:
                self._record_submission(run, scheduler.name, None)
            try:
                jobs = scheduler.submit(group, job_function, self._job_args, started=lambda run, job:
                                        self._record_submission(run, scheduler.name, str(job.job_id)))
            except SchedulerRefused as exc:
                earlier = sorted({str(job.job_id).split("_")[0] for _, job in submitted})
                raise SweepRefused(f"{exc}\n" + (f"Submitted before it: {', '.join(earlier)} (they run; "
                                   f"scancel {' '.join(earlier)} to stop them)." if earlier
                                   else "Nothing was submitted."))
            for run, job in zip(group, jobs):
                self._record_submission(run, scheduler.name, str(job.job_id))
                submitted.append((run, job))
        return submitted

    def _outcome(self, scheduler, job: Any, run: PlannedRun) -> JobReturn:
        """Wait for the job; if the run left no record, write one (from the scheduler's account)."""
        from suite import results
        from suite.schedulers.base import wait_until_done

        error = "the run ended without writing a record"
        failure = wait_until_done(job, check=lambda: scheduler.node_failure(job))
        if failure is None:  # ended: did a node die? (the survivors may have written first, or no rank)
            record = run.run_dir / results.RESULT_FILE
            status = results.read_record(record)["status"] if record.exists() else None
            if status != "ok":
                failure = scheduler.node_failure(job, peer_lost=status in ("killed", "hang"))
        if failure is not None:
            results.write_node_failure(run.run_dir, *failure)
            return _returned(run, "node_fail")
        if not (run.run_dir / results.RESULT_FILE).exists():
            try:  # submitit's account of it (for a failed task it waits ~15 s for its pickle)
                job.results()
            except Exception as exc:  # a failed rank, a time-out, a cancellation
                error = f"{type(exc).__name__}: {str(exc)[-2000:]}"
        if not (run.run_dir / results.RESULT_FILE).exists():
            status, details = scheduler.account(job)
            results.write_record_from_submission(run.run_dir, status=status, error=error, details=details)
        return _returned(run, results.read_record(run.run_dir / results.RESULT_FILE)["status"])

    def _print_dry_run(self, groups: List[List[PlannedRun]], scheduler, sweep_dir: Path) -> None:
        from suite.status import redact_label

        n = sum(len(g) for g in groups)
        print(f"Dry run: {n} runs would start ({scheduler.name}), shortest expected first; nothing "
              f"was submitted.\nSweep folder: {sweep_dir}\n")
        for k, group in enumerate(groups):
            described = scheduler.describe(group)
            if described:
                print(f"=== submission {k}: {len(group)} runs, {described}")
            for task, run in enumerate(group):
                p = run.plan
                print(f"  [{k}:{task}] #{run.idx} model={run.typed.model.name} "
                      f"strategy={run.typed.strategy.name} optimizer={run.typed.optimizer.name} "
                      f"precision={p.precision} nodes={p.nodes} "
                      f"ranks_per_node={p.ranks_per_node} world_size={p.world_size} "
                      f"global_batch={p.global_batch_size} ({redact_label(run.label)})")
                if run.typed.workload.name == "train":
                    print(f"      {models.describe(run.typed.model)}")
                    print(f"      {_memory_line(run)}")
                if p.compiled_ops:
                    print(f"      compiles DeepSpeed ops unless prebuilt: "
                          f"{', '.join(name for name, _ in p.compiled_ops)}")
                if run.typed.workload.name == "train":
                    self._print_reproduction(run)
            if described:
                print()


    @staticmethod
    def _print_reproduction(run: PlannedRun) -> None:
        """The engine config the run will be given and the command that reruns it by hand (both
        are written into its folder when it is submitted: docs/reproduce.md)."""
        import json

        from suite import results

        name, config = results.engine_config(run.plan.to_dict())
        print(f"      {name}: {json.dumps(config, separators=(',', ':'), default=str)}")
        # the dry run creates no run folder: say what the submission would write there
        print(f"      would write {run.run_dir.resolve()}/ ({results.SUBMISSION_FILE}, {name}, "
              f"{results.RERUN_FILE}, then {results.RESULT_FILE})")
        print(f"      rerun by hand once it exists: {results.rerun_command(run.run_dir.resolve(), run.plan.nodes, run.plan.ranks_per_node, sys.executable, os.getcwd())}")

    @staticmethod
    def _ask_in_dry_run(scheduler, groups: List[List[PlannedRun]]) -> None:
        """The dry run asks the scheduler what the real submission would: each Slurm job array
        to `sbatch --test-only` (it submits nothing), so a request the cluster cannot meet is
        refused here too; where sbatch is not on PATH, say that it was not asked."""
        from suite.schedulers import SchedulerRefused

        if scheduler.name != "slurm" or not groups:
            return
        if not scheduler.can_ask():
            print("The scheduler was not asked: sbatch is not on PATH here, so no job array was put to "
                  "`sbatch --test-only`; what only the cluster can say (more nodes or GPUs than it has) "
                  "is checked on the real submission.", flush=True)
            return
        try:
            scheduler.check(groups)
        except SchedulerRefused as exc:
            raise SweepRefused(f"Dry run: {exc}")
        print(f"sbatch --test-only accepted each of the {len(groups)} job array(s); nothing was submitted.",
              flush=True)


def _memory_line(run: PlannedRun) -> str:
    """The memory model's prediction per device, for the dry run (docs/memory.md)."""
    from suite import plan as planning
    from suite.memory import predict_memory

    need = predict_memory(run.typed, run.plan)
    gib = lambda v: f"{v / 2 ** 30:.2f}"  # noqa: E731
    return (f"memory model: {gib(need['required_bytes'])} GiB per device with allowance (model states "
            f"{gib(need['model_state_bytes'])}, activations {gib(need['activation_bytes'])}, logits "
            f"{gib(need['logits_bytes'])}, buffers {gib(need['buffer_bytes'])})"
            + f"; {planning.memory_line(run.typed, run.plan)}")


def gpu_device_files(dev: Path = Path("/dev")) -> List[str]:
    """The GPU driver's device files (NVIDIA /dev/nvidia0.., AMD /dev/kfd, WSL's /dev/dxg): where
    there are none, torch sees no GPU either, and the launcher need not import it (~2 s of every
    sweep's start on a machine without GPUs)."""
    return sorted(p.name for p in dev.glob("*") if re.fullmatch(r"nvidia\d+|kfd|dxg", p.name))


def _warn_of_typed_secrets(job_overrides: Sequence[Sequence[str]]) -> None:
    """A credential typed on the command line: the suite writes it <redacted> in its own files
    (sweep.json, submission.json, result.json, the dry run), but Hydra's and submitit's files
    keep what was typed; a reference keeps the value out of them."""
    from suite.status import typed_secrets

    keys = sorted({key for overrides in job_overrides for key in typed_secrets(overrides)})
    if keys:
        log.warning(f"A credential typed on the command line ({', '.join(keys)}): the suite writes it as "
                    "<redacted> in its own files, but Hydra (.hydra/overrides.yaml, config.yaml, "
                    "multirun.yaml) and submitit (the .submitit/ pickles) keep what was typed. Pass it "
                    "from the environment instead, e.g. +cluster.env.NAME='${oc.env:NAME}': then they "
                    "keep only the reference")


def _refuse_mixed_sweeps(runs: List[PlannedRun]) -> None:
    if not runs:
        raise SweepRefused("No valid point in the sweep; nothing was started.")
    schedulers = {r.typed.cluster.scheduler for r in runs}
    if len(schedulers) > 1:
        raise SweepRefused(f"The sweep mixes cluster.scheduler values {sorted(schedulers)}; "
                           "one sweep goes to one scheduler. Nothing was started.")
