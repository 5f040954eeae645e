"""The suite end to end, for real: `python -m suite.sweep -m` starts 2-rank DeepSpeed runs on
the CPU (gloo) through submitit's local executor, and the report is built from the records.
(Failing runs beside good ones: tests/test_faults.py.)"""
import json

import pandas as pd
import pytest

from suite import metric_registry

from conftest import run_sweep, sweep_dirs


def records(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))}


def test_default_sweep_trains_every_zero_stage_and_reports_every_run(tmp_path):
    done = run_sweep(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path)
    runs = records(sweep)
    assert len(runs) == 8
    assert {(r["strategy"], r["zero_stage"]) for r in runs.values()} == {
        ("ddp", 0), ("zero1", 1), ("zero2", 2), ("zero3", 3)}
    assert {r["optimizer"] for r in runs.values()} == {"adamw", "sgd_momentum"}
    for name, r in runs.items():
        assert r["status"] == "ok", (name, r["error"])
        assert r["world_size"] == 2 and r["accelerator"] == "cpu"
        m = r["metrics"]
        assert m["tokens_per_s"] > 0 and m["timed_steps"] == 10
        assert m["tokens_per_s_per_device"] == pytest.approx(m["tokens_per_s"] / 2)
        assert m["mfu"] is None  # no datasheet peak for a CPU
        assert m["energy_j"] is None and m["tokens_per_joule"] is None  # no NVML: null, not a guess
        assert metric_registry.unregistered(m) == []  # every metric it records is registered
        assert m["loss_all_finite"] and m["peak_memory_bytes"] > 0
        assert r["env"]["deepspeed"] and r["config"]["strategy"]["name"] == r["strategy"]
    frame = pd.read_parquet(sweep / "report" / "runs.parquet")
    assert sorted(frame.run_id) == sorted(r["run_id"] for r in runs.values())
    assert set(metric_registry.scalar_columns()) <= set(frame.columns)
    md = (sweep / "report" / "report.md").read_text()
    assert "runs: 8, ok: 8, failed: 0" in md
    throughput = md.split("### tiny")[1].split("\n## ")[0]
    assert sum(line.startswith("| zero") or line.startswith("| ddp") for line in throughput.splitlines()) == 8
    assert str(sweep / "report" / "report.md") in done.stdout  # the command says where it is
    # while it waited, the driver logged the counts (not a terminal: a line when they change),
    # and the counts it ended with
    progress = [line for line in done.stderr.splitlines() if line.startswith("[sweep] ")]
    assert progress[0].startswith("[sweep] 0/8 runs finished: ") and len(progress) >= 3, progress
    assert progress[-1] == "[sweep] 8/8 runs finished: 0 pending, 0 running, 8 ok; done"
    # every comparison says whether it stands out of the noise: ddp against ZeRO-3 (2-3x apart
    # on the CPU) is a clear gap; the report's best configuration has its interval and verdict
    from suite.report import intervals

    runs_of = intervals.runs_by_configuration(frame)
    key = {(r.strategy, r.optimizer): r.config_key for r in frame.itertuples()}
    change, low, high = intervals.change_interval(runs_of[key["zero3", "adamw"]], runs_of[key["ddp", "adamw"]])
    assert low > 0, (change, low, high)
    best = md.split("## Best configuration")[1].split("\n## ")[0]
    assert "95% interval" in best and ("| clear " in best or "| tie: inside the noise" in best), best
    assert "- best configuration: " in md and throughput.count("95% interval") == 1


def test_an_invalid_sweep_is_refused_before_any_run_starts(tmp_path):
    done = run_sweep(tmp_path, "precision=fp32,fp16", "optimizer=adamw,lamb")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "The sweep was refused, nothing was started" in out
    assert "precision=fp16 needs a GPU" in out and "optimizer=lamb needs a GPU" in out
    assert not list(tmp_path.glob("*/*/result.json")) and not list(tmp_path.glob("*/.submitit/*/*"))


def test_every_optimizer_the_suite_offers_trains_on_the_cpu_or_is_refused_with_the_reason(tmp_path):
    # sgd, sgd_momentum and adamw train in the parity and default sweeps; adam and adagrad had
    # only been planned. Each trains here (adam as DeepSpeed's Adam with torch_adam, adagrad as
    # DeepSpeed's CPU Adagrad under ZeRO-2); lamb is DeepSpeed's CUDA kernel and is refused.
    from suite.config import OPTIMIZERS

    done = run_sweep(tmp_path / "ran", "optimizer=adam,adagrad", "strategy=zero2", "train.timed_steps=3",
                     "train.warmup_steps=1", "report.enabled=false")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path / "ran")
    runs = {json.loads(p.read_text())["optimizer"]: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert set(runs) == {"adam", "adagrad"} and {r["status"] for r in runs.values()} == {"ok"}
    for r in runs.values():  # it trained: the loss moved
        losses = r["metrics"]["loss_per_step"]
        assert len(losses) == 4 and losses[-1] != losses[0]
    refused = run_sweep(tmp_path / "refused", "optimizer=lamb")
    assert refused.returncode != 0 and "optimizer=lamb needs a GPU" in refused.stdout + refused.stderr
    trained_elsewhere = {"sgd", "sgd_momentum", "adamw"}  # tests/test_parallel.py, the default sweep
    assert set(OPTIMIZERS) == set(runs) | trained_elsewhere | {"lamb"}
