"""Collation and report tables on hand-built record sets."""
import pandas as pd

from suite import results
from suite.report.build import report_sweep
from suite.report.collate import COLUMNS, load_sweep


def write(sweep, name, status="ok", strategy="ddp", tokens=None, world=2, error=None, model="tiny"):
    metrics = {} if tokens is None else {"tokens_per_s_per_device": tokens, "tokens_per_s": tokens * world,
                                         "step_time_median_s": 0.01, "step_time_cv": 0.05,
                                         "tflops_per_device": 0.01, "mfu": None,
                                         "peak_memory_bytes": 200 * 2 ** 20}
    rec = results.make_record(
        run_id=f"{sweep.name}/{name}", sweep_id=sweep.name, status=status, error=error,
        config={"strategy": strategy}, metrics=metrics, env={"torch": "2.13.0", "deepspeed": "0.19.8"},
        axes={"model": model, "strategy": strategy, "optimizer": "adamw", "precision": "fp32",
              "world_size": world, "micro_batch_size": 2, "grad_accum_steps": 1},
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
    assert "| zero1 / adamw / fp32 / mb 2 |" in best and "| ddp / adamw / fp32 " in best
    assert "50.0%" in best
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


def test_a_layout_off_the_data_parallel_losses_fails_the_report_and_its_command(tmp_path):
    # issue 18: a parity mismatch must fail the sweep (exit 1), not only read NO in a table
    import subprocess
    import sys

    from conftest import REPO

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
    report = report_sweep(sweep)
    assert not report.all_ok
    assert "loss parity: 2 of 3 compared runs match plain data parallel; NOT: zero3" in report.summary_text
    done = subprocess.run([sys.executable, "-m", "suite.report", str(sweep)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
