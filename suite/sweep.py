"""Entry point: `python -m suite.sweep -m [overrides]`. Hydra composes each run's config, our
launcher (hydra_plugins/suite_launcher) starts the runs, each rank lands in `main`, and when
the multirun ends the report is built."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import suite.config  # noqa: F401  (registers the schemas with Hydra's ConfigStore)

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig) -> Optional[str]:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN":
        raise SystemExit("run the suite as a multirun: python -m suite.sweep -m [overrides]")
    from suite.rank import run_rank

    run_dir = Path(hydra_cfg.runtime.output_dir)
    record = run_rank(cfg, run_dir, sweep_id=Path(hydra_cfg.sweep.dir).name)
    return None if record is None else record["status"]


def every_run_ok(sweep_dir: Path) -> bool:
    """Whether every run of the sweep (a folder with a submission or a record) wrote an ok
    record: what the sweep's exit status says when it builds no report."""
    import json

    from suite import results

    runs = {p.parent for name in (results.RESULT_FILE, results.SUBMISSION_FILE) for p in sweep_dir.glob(f"*/{name}")}
    return all((run / results.RESULT_FILE).exists()
               and json.loads((run / results.RESULT_FILE).read_text()).get("status") == "ok" for run in runs)


class ReportCallback(Callback):
    """Builds the report when a multirun ends and prints its summary and path."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        submit, options = config.get("submit", {}), config.get("report", {})
        if submit.get("dry_run") or not submit.get("wait", True):
            return
        if not options.get("enabled", True):  # no report; the exit status still tells
            if not every_run_ok(Path(config.hydra.sweep.dir)):
                raise SystemExit(1)
            return
        from suite.plan import to_object
        from suite.report.build import report_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        report = report_sweep(sweep_dir, to_object(config).report)
        print(report.summary_text)
        print(f"\nReport: {report.markdown_path}\n        {report.html_path}")
        if not report.all_ok:
            raise SystemExit(1)  # the exit status tells whether every run succeeded


if __name__ == "__main__":
    main()
