"""The report of a sweep, step by step: reconcile with the schedulers (runs that ended without a
record get one), collate the records, add the sweep to the history, analyse (pure, in
analysis.py), and render report.md, report.html, the plots and runs.parquet/csv. Both the end of
a sweep and `python -m suite.report` call `report_sweep`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pandas as pd

from suite import schedulers
from suite.config import ReportConfig
from suite.report import analysis, changepoints, history, intervals, render, sections
from suite.report.collate import load_sweep


@dataclass
class Report:
    frame: pd.DataFrame
    markdown_path: Path
    html_path: Path
    summary_text: str
    all_ok: bool
    unfinished: List[str]      # runs without a record: pending, running, or not looked up
    regressions: pd.DataFrame
    reconciliation_skipped: Optional[str] = None  # why the scheduler's account was not asked


def report_sweep(sweep_dir: Path, options: Optional[ReportConfig] = None) -> Report:
    options = options or ReportConfig()
    sweep_dir = Path(sweep_dir)
    reconciled = schedulers.reconcile(sweep_dir)       # 1. every ended run has a record
    frame = load_sweep(sweep_dir)                      # 2. one row per run
    if options.history_dir:                            # 3. the sweep joins the history
        history.append(Path(options.history_dir), frame)
    return build_report(sweep_dir, frame, options, reconciled)  # 4-5. analyse, render


def build_report(sweep_dir: Path, frame: pd.DataFrame, options: ReportConfig,
                 reconciled: schedulers.Reconciliation) -> Report:
    """Analyse the collated runs (and the history, if any) and write SWEEP_DIR/report/."""
    out = Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "runs.parquet", index=False)
    frame.to_csv(out / "runs.csv", index=False)

    ceilings = analysis.measured_ceilings(frame)
    training = frame[frame.workload == "train"]
    search = _autotune_summary(sweep_dir)
    if search:  # the search's short runs are in its own section; the tables show full-length runs
        final = {r["run_id"] for p in search["points"] for r in p["runs"] if r["final"]}
        training = training[training.run_id.isin(final)]
    configs = analysis.aggregate_repeats(training, options.max_cv)
    # a record whose stored figure is not what its step times give has no interval (the bar
    # and its interval would come from different numbers); the header names it
    disagreeing = analysis.step_time_disagreements(training)
    runs = intervals.runs_by_configuration(training[~training.run_id.isin(disagreeing.run_id)])
    configs = analysis.rate_intervals(configs, runs)
    configs["of_gemm_ceiling"] = analysis.of_gemm_ceiling(configs, ceilings)
    configs["measurement_error"] = analysis.measurement_errors(configs)
    parity = analysis.parity_table(training)
    regress, trend = pd.DataFrame(columns=analysis.REGRESSION_COLUMNS), {}
    changes = pd.DataFrame(columns=changepoints.CHANGE_COLUMNS)
    if options.history_dir:  # the sweep's own rows are skipped by regressions()
        otava_nights = changepoints.otava_nights(options.window, options.otava_window, options.otava_min_nights)
        ok = history.load(Path(options.history_dir), history.COLUMNS, ok_only=True,  # the nights the verdicts read
                          last_nights=max(otava_nights, options.window + 1))
        regress = analysis.regressions(configs, ok, window=options.window, min_drop=options.min_drop,
                                       noise_sigmas=options.noise_sigmas,
                                       max_allowed_drop=options.max_allowed_drop)
        # Otava's change points beside the median/MAD rule; report.change_method decides
        changes = changepoints.changes_per_configuration(
            ok, "otava", otava_window=options.otava_window, max_pvalue=options.otava_max_pvalue,
            min_magnitude=options.otava_min_magnitude, last_nights=otava_nights, config_keys=configs.config_key)
        regress = changepoints.decide(regress, changes, options.change_method,
                                      min_nights=options.otava_min_nights, recent_nights=options.window)
        trend = analysis.trends(ok)
        regress.to_csv(out / "regressions.csv", index=False)  # every configuration's verdict

    straggling, slow_nodes = analysis.stragglers(frame, options.straggler_min_excess,
                                                 options.straggler_noise_sigmas)
    header = sections.header_lines(Path(sweep_dir).name, frame, configs, parity, regress, reconciled, options)
    preflight_nodes, together = analysis.node_preflight(frame, options.preflight_tolerance,
                                                              options.preflight_noise_sigmas)
    for line in (sections.straggler_line(straggling, slow_nodes), sections.preflight_line(preflight_nodes)):
        if line:
            header.insert(len(header) - 1 if header[-1].startswith("- torch") else len(header), line)
    best = analysis.best_configurations(configs, runs)
    for line in (sections.disagreement_line(disagreeing), sections.best_line(best)):
        if line:
            header.insert(len(header) - 1 if header[-1].startswith("- torch") else len(header), line)
    throughput = sections.throughput_section(configs)
    shown = [sections.autotune_section(search), sections.best_section(best)]
    if options.history_dir:
        shown += sections.history_sections(regress, trend, changes, options)
    shown += [throughput, sections.scaling_section(analysis.scaling_table(configs, runs)),
              sections.preflight_section(preflight_nodes, together, options),
              sections.ceilings_section(ceilings),
              sections.model_section(analysis.model_vs_measured(configs, options.memory_ratio_bounds)),
              sections.engines_section(analysis.engine_comparison(configs)),
              sections.parity_section(parity),
              sections.stragglers_section(straggling, slow_nodes, options, analysis.straggler_exclusions(frame)),
              sections.failures_section(frame),
              sections.environment_section(frame)]
    shown = [s for s in shown if s is not None]
    for s in shown:
        for name, image in s.images:
            (out / f"{name}.png").write_bytes(image)
    markdown_path, html_path = out / "report.md", out / "report.html"
    markdown_path.write_text(render.markdown(shown, header))
    html_path.write_text(render.html_page(shown, header))
    summary = "\n".join(header) + "\n\n" + "\n\n".join(
        f"{caption}\n{render.markdown_table(table)}" for caption, table in throughput.tables)
    n_ok = int((frame.status == "ok").sum())
    parity_ok = parity.empty or not bool((parity.matches == "NO").any())
    regression_ok = not (options.fail_on_regression and (regress.verdict == "regression").any())
    preflight_ok = not bool(preflight_nodes.flagged.any())  # an acceptance check that failed
    unfinished = reconciled.unfinished + reconciled.unknown
    return Report(frame, markdown_path, html_path, summary,
                  all_ok=n_ok == len(frame) and not unfinished and parity_ok and regression_ok and preflight_ok,
                  unfinished=unfinished, regressions=regress, reconciliation_skipped=reconciled.skipped)


def _autotune_summary(sweep_dir: Path) -> Optional[dict]:
    """autotune.json of an experiment=autotune sweep (None for a grid sweep)."""
    import json

    path = Path(sweep_dir) / "autotune.json"
    return json.loads(path.read_text()) if path.exists() else None
