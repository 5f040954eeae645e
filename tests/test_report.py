"""Collation and report tables on hand-built record sets."""
import dataclasses

import pandas as pd
import pytest

from suite import results
from suite.report.build import report_sweep
from suite.report.collate import COLUMNS, load_sweep


def write(sweep, name, status="ok", strategy="ddp", tokens=None, world=2, error=None, model="tiny",
          micro=2, accelerator="cpu", **figures):
    metrics = {} if tokens is None else {"tokens_per_s_per_device": tokens, "tokens_per_s": tokens * world,
                                         "step_time_median_s": 0.01, "step_time_cv": 0.05,
                                         "tflops_per_device": 0.01, "mfu": None,
                                         "peak_memory_bytes": 200 * 2 ** 20, **figures}
    rec = results.make_record(
        run_id=f"{sweep.name}/{name}", sweep_id=sweep.name, status=status, error=error,
        config={"model": {"name": model}, "strategy": strategy, "train": {"micro_batch_size": micro}},
        metrics=metrics,
        env={"torch": "2.13.0", "deepspeed": "0.19.8"},
        axes={"model": model, "strategy": strategy, "optimizer": "adamw", "precision": "fp32",
              "world_size": world, "micro_batch_size": micro, "grad_accum_steps": 1, "accelerator": accelerator},
        started_at="t0", finished_at="t1")
    results.write_record(sweep / name, rec)


def test_empty_sweep_still_has_the_schema(tmp_path):
    frame = load_sweep(tmp_path)
    assert list(frame.columns) == COLUMNS and len(frame) == 0
    report = report_sweep(tmp_path)
    assert report.markdown_path.exists() and "runs: 0" in report.markdown_path.read_text()


def test_report_holds_every_run_and_lists_failures(tmp_path):
    sweep = tmp_path / "sweep"
    write(sweep, "0_ddp", strategy="ddp", tokens=1000.0)
    write(sweep, "1_zero1", strategy="zero1", tokens=1500.0)
    write(sweep, "2_zero3", strategy="zero3", status="error", error="RuntimeError: boom")
    write(sweep, "3_zero2", strategy="zero2", tokens=900.0, model="gpt_125m", world=1)
    report = report_sweep(sweep)
    assert not report.all_ok
    frame = pd.read_parquet(sweep / "report" / "runs.parquet")
    assert len(frame) == 4 and (sweep / "report" / "runs.csv").exists()
    md = report.markdown_path.read_text()
    assert "runs: 4, ok: 3, failed: 1" in md
    assert "### tiny" in md and "### gpt_125m" in md
    assert "1,500" in md and "RuntimeError: boom" in md
    # best per (model, world size): zero1 beats ddp for tiny on 2 ranks, by 50%
    best = md.split("## Best configuration")[1].split("\n## ")[0]
    # named by the axes that vary in the sweep: here the strategy alone
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in best.splitlines() if line.startswith("| tiny")]
    # these records keep no step times: no interval, no verdict (never a guess)
    assert rows == [["tiny", "2", "zero1", "1,500", "—", "ddp", "50.0%", "—", "—"]]
    html = report.html_path.read_text()
    assert html.count("data:image/png;base64,") == 2 and "RuntimeError: boom" in html
    assert (sweep / "report" / "throughput_tiny.png").stat().st_size > 1000


def test_a_straggler_in_a_run_on_one_node_names_the_rank_and_no_slow_node():
    # the report callback once crashed here: an empty nodes table selected columns, not rows
    import json

    from suite.report.analysis import stragglers
    from suite.report.sections import straggler_line

    frame = pd.DataFrame([{"run_id": "r", "model": "tiny", "strategy": "zero2", "world_size": 2,
                           "workload": "train", "status": "ok", "step_time_cv": 0.01,
                           "per_rank_json": json.dumps({"hosts": ["node2", "node2"],
                                                        "forward_time_s": [0.0034, 0.0050]})}])
    runs, nodes = stragglers(frame, min_excess=0.30, noise_sigmas=3.0)
    assert nodes.empty and bool(runs.flagged.iloc[0])
    assert straggler_line(runs, nodes) == "- stragglers: 1 of 1 run (rank 1 on node2)"


def test_a_layout_off_the_data_parallel_losses_fails_the_report_and_its_command(tmp_path, capsys):
    # issue 18: a parity mismatch must fail the sweep (exit 1), not only read NO in a table
    from suite.report.__main__ import main

    sweep = tmp_path / "sweep"
    for name, strategy, zero, losses in (("0_ddp", "ddp", 0, [10.0, 9.0, 8.0]),
                                         ("1_zero2", "zero2", 2, [10.0, 9.0, 8.00005]),  # within 1e-4
                                         ("2_zero3", "zero3", 3, [10.0, 9.0, 8.01])):   # 1e-2 off
        rec = results.make_record(
            run_id=f"sweep/{name}", sweep_id="sweep", status="ok", error=None, config={"strategy": strategy},
            metrics={"loss_per_step": losses, "tokens_per_s_per_device": 100.0, "tokens_per_s": 200.0},
            env={"torch": "2.13.0"}, started_at="t0", finished_at="t1",
            axes={"model": "tiny", "strategy": strategy, "optimizer": "adamw", "precision": "fp32",
                  "world_size": 2, "global_batch_size": 8, "zero_stage": zero, "tensor_parallel": 1,
                  "pipeline_parallel": 1, "sequence_parallel": 1, "check_parity": True,
                  "activation_checkpointing": "none", "micro_batch_size": 2, "grad_accum_steps": 2})
        results.write_record(sweep / name, rec)
    # `python -m suite.report SWEEP` prints the summary and exits with what main returns
    assert main([str(sweep)]) == 1
    assert "loss parity: 2 of 3 compared runs match plain data parallel; NOT: zero3" in capsys.readouterr().out


def test_plots_name_the_axes_that_vary_and_mfu_and_memory_stand_beside_throughput(tmp_path, monkeypatch):
    # issue 16: two runs apart only in micro-batch shared the label "ddp / adamw / fp32 / 2 ranks"
    # (one bar drawn over the other), and there was no MFU or memory plot
    from suite.report import sections

    drawn, real_png = {}, sections.png

    def record_labels(fig):
        ax = fig.axes[0]
        drawn[ax.get_title()] = [t.get_text() for t in ax.get_yticklabels()]
        return real_png(fig)

    monkeypatch.setattr(sections, "png", record_labels)
    sweep = tmp_path / "sweep"
    for micro, tokens, mfu, predicted in ((2, 1000.0, 0.3, 150), (4, 1500.0, 0.45, 250)):
        write(sweep, f"{micro}_ddp", tokens=tokens, micro=micro, accelerator="cuda", mfu=mfu,
              memory_predicted_bytes=predicted * 2 ** 20)
    write(sweep, "9_cpu", tokens=100.0, model="gpt_125m")  # on the CPU: no MFU, no comparable peak
    report = report_sweep(sweep)
    assert drawn["tiny: throughput per device"] == ["mb 2", "mb 4"]
    assert drawn["tiny: model FLOPs utilisation"] == ["mb 2", "mb 4"]
    assert drawn["tiny: peak memory, measured against the memory model"] == ["mb 2", "mb 4"]
    assert {p.name for p in (sweep / "report").glob("*.png")} == {
        "throughput_tiny.png", "mfu_tiny.png", "memory_tiny.png", "throughput_gpt_125m.png"}
    md = report.markdown_path.read_text()
    assert "No MFU plot for gpt_125m: MFU needs the device's datasheet peak" in md
    assert "No memory plot for gpt_125m: its runs are on the CPU" in md
    assert report.html_path.read_text().count("data:image/png;base64,") == 4


def test_every_report_setting_is_an_option_of_the_report_command(tmp_path, capsys):
    # issue 16: --max-cv, the straggler, preflight and memory settings had no option
    from suite.config import ReportConfig
    from suite.report import __main__ as command

    with pytest.raises(SystemExit):
        command.main(["--help"])
    shown = capsys.readouterr().out
    settings = [f.name for f in dataclasses.fields(ReportConfig)]
    assert [name for name in settings if name != "enabled" and f"--{name.replace('_', '-')}" not in shown] == []
    assert set(command.NOT_OPTIONS) == {"enabled"}  # whether a sweep reports: this command is the report
    # each option sets its setting (a value other than the default)
    defaults, argv, wanted = ReportConfig(), [str(tmp_path)], {}
    for name in settings:
        default, flag = getattr(defaults, name), f"--{name.replace('_', '-')}"
        if name in command.NOT_OPTIONS:
            continue
        if isinstance(default, bool):
            wanted[name], argv = not default, argv + [flag if not default else f"--no-{flag[2:]}"]
        elif isinstance(default, list):
            wanted[name], argv = [0.5, 2.0], argv + [flag, "0.5", "2.0"]
        elif default is None:
            wanted[name], argv = str(tmp_path / "history"), argv + [flag, str(tmp_path / "history")]
        elif isinstance(default, str):  # change_method, the one choice: the other method
            wanted[name], argv = "median_mad", argv + [flag, "median_mad"]
        else:
            wanted[name] = default + 1 if isinstance(default, int) else default / 2
            argv += [flag, str(wanted[name])]
    _, options = command.parse(argv)
    assert {name: getattr(options, name) for name in wanted} == wanted
    assert command.parse([str(tmp_path), "--history", "h"])[1].history_dir == "h"  # the older name


@pytest.mark.parametrize("sacct", [None, "echo 'sacct: error: Problem talking to the database' >&2; exit 1"])
def test_a_sweep_copied_off_the_cluster_reports_and_says_reconciliation_was_skipped(tmp_path, monkeypatch, sacct):
    # issue 16: on a laptop (no sacct) or with accounting down, the report failed outright
    sweep = tmp_path / "sweep"
    write(sweep, "0_ddp", tokens=1000.0)
    results.write_submission(sweep / "1_zero1", run_id="sweep/1_zero1", sweep_id="sweep", config={},
                             axes={"strategy": "zero1"}, plan={}, scheduler="slurm", job_id="77_1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if sacct:
        (bin_dir / "sacct").write_text(f"#!/bin/sh\n{sacct}\n")
        (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    report = report_sweep(sweep)
    why = ("sacct failed (exit 1): sacct: error: Problem talking to the database" if sacct
           else "sacct could not be run: [Errno 2] No such file or directory")
    line = next(line for line in report.summary_text.splitlines() if "reconciliation" in line)
    assert line.startswith(f"- reconciliation with the scheduler skipped (slurm: {why}")
    assert line.endswith("runs without a record, their state unknown: 1 (1_zero1)")
    assert "not finished yet" not in report.summary_text  # not known to be pending or running
    assert report.unfinished == ["1_zero1"] and not report.all_ok
    assert line in report.markdown_path.read_text()
