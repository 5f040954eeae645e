"""A Hydra launcher built on hydra-submitit-launcher's: it plans every run of the sweep before
anything starts (an invalid point stops the whole sweep, submitting nothing), gives each run
the ranks its own config asks for, runs local runs one after another (side by side they
would disturb each other's timings), and turns a run that died without a record into one.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class SuiteLocalConf:
    """Runs on this machine through submitit's local executor, one run at a time."""

    _target_: str = "hydra_plugins.suite_launcher.suite_launcher.SuiteLocalLauncher"
    #: where submitit keeps its pickles and each rank's stdout/stderr
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"


ConfigStore.instance().store(group="hydra/launcher", name="suite_local", node=SuiteLocalConf,
                             provider="suite")


class SweepRefused(SystemExit):
    """The sweep has invalid points; nothing was started."""


class SuiteLocalLauncher(BaseSubmititLauncher):
    _EXECUTOR = "local"

    def _plan_all(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
                  ) -> List[Tuple[DictConfig, Any, Path]]:
        """(run config, RunPlan, run folder) per job; refuses the sweep on any invalid point."""
        import torch
        from suite.config import ConfigError
        from suite.plan import plan_run

        local_gpus = torch.cuda.device_count()
        planned, problems = [], []
        for offset, overrides in enumerate(job_overrides):
            run_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(run_cfg.hydra.job):
                run_cfg.hydra.job.num = initial_job_idx + offset
            run_dir = Path(str(self.config.hydra.sweep.dir)) / str(run_cfg.hydra.sweep.subdir)
            try:
                planned.append((run_cfg, plan_run(run_cfg, local_gpus), run_dir))
            except (ConfigError, ValueError) as exc:
                problems.append(f"  #{initial_job_idx + offset} {' '.join(filter_overrides(overrides))}: {exc}")
        if problems:
            raise SweepRefused("The sweep was refused, nothing was started. Invalid points:\n"
                               + "\n".join(problems))
        return planned

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        import submitit

        planned = self._plan_all(job_overrides, initial_job_idx)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Sweep folder: {sweep_dir} ({len(planned)} runs, one at a time)")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"])
        returns = []
        for offset, (overrides, (run_cfg, plan, run_dir)) in enumerate(zip(job_overrides, planned)):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} "
                     f"({plan.world_size} ranks, {plan.accelerator})")
            executor.update_parameters(
                tasks_per_node=plan.ranks_per_node, nodes=plan.nodes,
                gpus_per_node=plan.ranks_per_node if plan.accelerator == "cuda" else 0,
                timeout_min=run_cfg.cluster.timeout_min, name=f"suite-{idx}")
            job = executor.submit(self, list(overrides), "hydra.sweep.dir", idx,
                                  f"job_id_for_{idx}", Singleton.get_state())
            returns.append(self._outcome(job, list(overrides), run_cfg, plan, run_dir))
        return returns

    def _outcome(self, job: Any, overrides: List[str], run_cfg: DictConfig, plan: Any,
                 run_dir: Path) -> JobReturn:
        """The run's status; a job that failed without leaving a record gets one now, so
        that no run is missing from the report."""
        from suite import results

        error: Optional[str] = None
        try:
            job.results()
        except Exception as exc:  # a failed rank: the record (if any) tells what happened
            error = f"{type(exc).__name__}: {str(exc)[-2000:]}"
        record_path = run_dir / results.RESULT_FILE
        if not record_path.exists():
            results.write_launcher_record(run_dir, run_cfg, plan, status="error",
                                          error=error or "the run ended without a record",
                                          job_id=str(job.job_id))
        status = results.read_record(record_path)["status"]
        # COMPLETED even for a failed run: Hydra would abort the sweep on a FAILED return,
        # before the report. The exit status is decided from the records instead.
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=status)
        ret.working_dir = str(run_dir)
        return ret
