"""Micro-benchmark workloads for real on 2 CPU ranks, and the bench scripts in small mode (so
they cannot rot; no timing is asserted)."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, run_sweep, sweep_dirs


def test_gemm_and_collective_ceilings_become_records_and_a_report_section(tmp_path):
    # workload=preflight: the GEMM ceiling and the collectives in one job (workload=gemm and
    # workload=allreduce run each alone: bench/gpu_check.sh, tests/test_gpu_check.py)
    done = run_sweep(tmp_path, "workload=train,preflight", "strategy=ddp", "optimizer=sgd_momentum",
                     "train.timed_steps=3", "workload.gemm_sizes=[64,128]", "workload.message_bytes=[4096,65536]")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path)
    runs = {json.loads(p.read_text())["workload"]: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    from suite import metric_registry

    assert all(metric_registry.unregistered(r["metrics"]) == [] for r in runs.values())
    gemm = runs["preflight"]["metrics"]
    assert [(r["dtype"], r["n"]) for r in gemm["gemm"]] == [("fp32", 64), ("fp32", 128)]
    for r in gemm["gemm"]:
        assert r["tflops"] == pytest.approx(2 * r["n"] ** 3 / r["time_s"] / 1e12)
    assert gemm["gemm_ceiling_tflops"]["fp32"] == max(r["tflops"] for r in gemm["gemm"])
    micro = runs["preflight"]["metrics"]
    coll = micro["collectives"]
    # one node: the whole world is inside it, and nothing crossed a network
    assert {(r["scope"], r["ranks"]) for r in coll} == {("intra_node", 2)}
    assert micro["busbw_intra_node_gbps"] == micro["busbw_peak_gbps"] and micro["busbw_inter_node_gbps"] is None
    assert micro["rank_hosts"] == runs["train"]["metrics"]["rank_hosts"] and len(micro["rank_hosts"]) == 2
    assert sorted({r["op"] for r in coll}) == ["all_gather", "all_reduce", "reduce_scatter"]
    for r in coll:  # 2 ranks: factor 2(n-1)/n = 1 for all_reduce, (n-1)/n = 1/2 otherwise
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * (1.0 if r["op"] == "all_reduce" else 0.5))
    md = (sweep / "report" / "report.md").read_text()
    assert "## Ceilings: matrix multiply and collectives" in md and "of GEMM ceiling" in md
    assert "runs: 2, ok: 2" in md


def test_bench_scripts_run_in_small_mode(tmp_path):
    out = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "bench/run_all.py", "--small", "--output", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    for row in ("harness overhead", "report over 20 run records", "from command to report"):
        assert row in text


def test_token_file_data_through_a_dataloader_keeps_every_layout_on_the_same_samples(tmp_path):
    from suite.workload.data import write_token_file

    tokens = write_token_file(tmp_path / "tokens.bin", 100_000, vocab_size=512)
    # a file:// URL: read through fsspec's local filesystem, memory-mapped
    done = run_sweep(tmp_path / "runs", "data=tokens", f"data.path=file://{tokens}", "data.workers=1",
                     "strategy=ddp,pp2", "optimizer=sgd_momentum", "train.check_parity=true",
                     "train.global_batch_size=8", "optimizer.scheduler=none", "train.timed_steps=3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path / "runs")
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/result.json")]
    assert {(r["data"], r["status"]) for r in runs} == {("tokens", "ok")}
    assert "2 of 2 compared runs match" in (sweep / "report" / "report.md").read_text()


def test_a_token_file_with_ids_beyond_the_vocabulary_is_an_error_record(tmp_path):
    from suite.workload.data import write_token_file

    tokens = write_token_file(tmp_path / "big.bin", 10_000, vocab_size=60_000)
    done = run_sweep(tmp_path / "runs", "data=tokens", f"data.path={tokens}", "strategy=ddp",
                     "optimizer=sgd_momentum", "train.timed_steps=2", "report.enabled=false")
    assert done.returncode == 1
    [record] = [json.loads(p.read_text()) for p in sweep_dirs(tmp_path / "runs")[0].glob("*/result.json")]
    assert record["status"] == "error" and "not below model.vocab_size=512" in record["error"]
