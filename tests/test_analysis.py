"""Report maths on hand-built frames with hand-computed answers."""
import json

import pandas as pd
import pytest

from suite.report.analysis import (REGRESSION_COLUMNS, aggregate_repeats, best_configurations,
                                   configuration_key, environment_diff, model_vs_measured,
                                   node_preflight, regressions, scaling_table, stragglers, trends)


def run(**values):
    base = dict(status="ok", model="tiny", strategy="ddp", optimizer="adamw", precision="fp32",
                micro_batch_size=2, scaling="none", world_size=1, nodes=1, global_batch_size=2,
                sweep_id="s1", finished_at="2026-11-01T00:00:00", repeat_index=0,
                peak_memory_bytes=100.0, memory_capacity_bytes=1000.0, step_time_median_s=1.0)
    base.update(values)
    config = {"strategy": base["strategy"], "world": base["world_size"], "mode": base["scaling"],
              "nodes": base["nodes"], "optimizer": base["optimizer"], "precision": base["precision"],
              "train": {"repeat_index": base["repeat_index"], "micro_batch_size": base["micro_batch_size"]}}
    base["config_json"] = json.dumps(config)
    return base


def test_repeats_are_one_configuration_with_median_and_spread():
    frame = pd.DataFrame([run(repeat_index=i, tokens_per_s_per_device=v) for i, v in enumerate([90.0, 100.0, 110.0])]
                         + [run(strategy="zero1", tokens_per_s_per_device=50.0)])
    assert configuration_key(frame.config_json[0]) == configuration_key(frame.config_json[1])
    configs = aggregate_repeats(frame, max_cv=0.05).set_index("strategy")
    assert configs.loc["ddp", "tokens_per_s_per_device"] == 100.0
    assert configs.loc["ddp", "repeats"] == 3
    # sample std of 90, 100, 110 is 10: CV 10% > 5% -> too noisy to compare
    assert configs.loc["ddp", "repeat_cv"] == pytest.approx(0.1)
    assert bool(configs.loc["ddp", "noisy"]) and not bool(configs.loc["zero1", "noisy"])


def test_weak_and_strong_scaling_efficiency():
    rows = [  # weak: tokens/s 1000 on 1 rank, 1800 on 2, 3200 on 4
        run(scaling="weak", world_size=1, tokens_per_s=1000.0, tokens_per_s_per_device=1000.0),
        run(scaling="weak", world_size=2, tokens_per_s=1800.0, tokens_per_s_per_device=900.0),
        run(scaling="weak", world_size=4, tokens_per_s=3200.0, tokens_per_s_per_device=800.0),
        # strong: the same global batch takes 4 s on 1 rank, 2.5 s on 2
        run(scaling="strong", world_size=1, step_time_median_s=4.0, tokens_per_s=100.0, tokens_per_s_per_device=100.0),
        run(scaling="strong", world_size=2, step_time_median_s=2.5, tokens_per_s=160.0, tokens_per_s_per_device=80.0),
    ]
    configs = aggregate_repeats(pd.DataFrame(rows), max_cv=0.05)
    table = scaling_table(configs).set_index(["mode", "world_size"])
    assert table.loc[("weak", 2), "speedup"] == pytest.approx(1.8)
    assert table.loc[("weak", 2), "efficiency"] == pytest.approx(0.9)   # 900 / 1000
    assert table.loc[("weak", 4), "efficiency"] == pytest.approx(0.8)   # 800 / 1000
    assert table.loc[("strong", 2), "speedup"] == pytest.approx(1.6)    # 4 / 2.5
    assert table.loc[("strong", 2), "efficiency"] == pytest.approx(0.8)  # 4*1 / (2.5*2)
    assert table.loc[("strong", 1), "efficiency"] == pytest.approx(1.0)
    assert list(table.nodes) == [1, 1, 1, 1, 1]


def test_scaling_efficiency_is_against_the_smallest_world_when_it_is_not_one():
    # issue 18: N0 = 2, so a formula that forgets to divide by N0 is off by 2x
    rows = [run(scaling="weak", world_size=2, tokens_per_s=1800.0, tokens_per_s_per_device=900.0),
            run(scaling="weak", world_size=4, tokens_per_s=3200.0, tokens_per_s_per_device=800.0),
            run(scaling="strong", world_size=2, step_time_median_s=2.5, tokens_per_s=100.0),
            run(scaling="strong", world_size=4, step_time_median_s=1.5, tokens_per_s=160.0)]
    table = scaling_table(aggregate_repeats(pd.DataFrame(rows), max_cv=0.05)).set_index(["mode", "world_size"])
    assert table.loc[("weak", 4), "efficiency"] == pytest.approx((3200 / 4) / (1800 / 2))   # 0.889
    assert table.loc[("strong", 4), "efficiency"] == pytest.approx(2.5 * 2 / (1.5 * 4))     # 0.833
    assert table.loc[("strong", 4), "speedup"] == pytest.approx(2.5 / 1.5)


def test_scaling_over_nodes_keeps_the_node_count_and_starts_from_the_fewest_nodes():
    rows = [run(scaling="weak", world_size=2, nodes=2, tokens_per_s=1700.0, tokens_per_s_per_device=850.0),
            run(scaling="weak", world_size=2, nodes=1, tokens_per_s=1800.0, tokens_per_s_per_device=900.0),
            run(scaling="weak", world_size=1, nodes=1, tokens_per_s=1000.0, tokens_per_s_per_device=1000.0)]
    table = scaling_table(aggregate_repeats(pd.DataFrame(rows), max_cv=0.05))
    assert list(zip(table.world_size, table.nodes)) == [(1, 1), (2, 1), (2, 2)]
    assert table.efficiency.tolist() == pytest.approx([1.0, 0.9, 0.85])  # 900/1000, 850/1000


def test_a_scaling_study_is_each_configuration_against_its_own_smallest_world():
    # issue 16: one weak and one strong study per optimizer and micro-batch, not one per strategy
    # against whichever run came first. Weak: the global batch follows the ranks; strong: the
    # accumulation does.
    weak = [("adamw", 2, 1, 1000.0), ("adamw", 2, 2, 1800.0), ("sgd_momentum", 2, 1, 2000.0),
            ("sgd_momentum", 2, 2, 3000.0), ("adamw", 4, 2, 3200.0)]
    rows = [run(scaling="weak", optimizer=o, micro_batch_size=mb, world_size=n, data_parallel=n,
                global_batch_size=mb * n, grad_accum_steps=1, tokens_per_s=t, tokens_per_s_per_device=t / n)
            for o, mb, n, t in weak]
    strong = [("adamw", 1, 4.0), ("adamw", 2, 2.5), ("sgd_momentum", 1, 2.0), ("sgd_momentum", 2, 1.6)]
    rows += [run(scaling="strong", optimizer=o, world_size=n, data_parallel=n, global_batch_size=16,
                 grad_accum_steps=8 // n, step_time_median_s=t, tokens_per_s=100.0 / t, tokens_per_s_per_device=1.0)
             for o, n, t in strong]
    table = scaling_table(aggregate_repeats(pd.DataFrame(rows), max_cv=0.05))
    # each study's N0 is 100%: three weak studies and two strong ones
    weak, strong = table[table["mode"] == "weak"], table[table["mode"] == "strong"]
    assert sorted(weak.efficiency) == pytest.approx([0.75, 0.9, 1.0, 1.0, 1.0])
    assert sorted(strong.efficiency) == pytest.approx([0.625, 0.8, 1.0, 1.0])
    # the table names what tells the studies apart
    table = table.set_index(["mode", "configuration", "world_size"])
    assert table.loc[("weak", "adamw / mb 2", 2), "efficiency"] == pytest.approx(0.9)           # 900 / 1000
    assert table.loc[("weak", "sgd_momentum / mb 2", 2), "efficiency"] == pytest.approx(0.75)   # 1500 / 2000
    assert table.loc[("weak", "adamw / mb 4", 2), "efficiency"] == pytest.approx(1.0)           # its own N0
    assert table.loc[("strong", "adamw / mb 2", 2), "speedup"] == pytest.approx(1.6)            # 4 / 2.5
    assert table.loc[("strong", "sgd_momentum / mb 2", 2), "speedup"] == pytest.approx(1.25)    # 2 / 1.6
    assert table.loc[("strong", "sgd_momentum / mb 2", 2), "efficiency"] == pytest.approx(0.625)  # 2 / (1.6 x 2)


def test_labels_name_every_axis_that_varies_and_nothing_that_follows():
    from suite.report.analysis import configuration_labels

    configs = pd.DataFrame([
        run(strategy=s, zero_stage=z, optimizer=o, micro_batch_size=mb, world_size=2, data_parallel=2)
        for s, z in (("ddp", 0), ("zero2", 2)) for o in ("adamw", "sgd_momentum") for mb in (2.0, 4.0)])
    axes, labels = configuration_labels(configs)
    # the stage follows from the strategy; precision and ranks do not vary
    assert axes == ["strategy", "optimizer", "micro_batch_size"]
    assert labels.iloc[0] == "ddp / adamw / mb 2" and labels.iloc[-1] == "zero2 / sgd_momentum / mb 4"
    assert labels.is_unique
    # shown axes are not named, nor what follows from them: dp from the ranks
    scaled = pd.DataFrame([run(world_size=n, data_parallel=n, micro_batch_size=mb) for n in (1, 2) for mb in (2, 4)])
    assert configuration_labels(scaled, shown=("world_size",))[0] == ["micro_batch_size"]
    # an axis that follows only where it tells rows apart: tp set apart from the strategy
    layouts = pd.DataFrame([run(strategy="tp", tensor_parallel=t) for t in (1, 2)])
    assert configuration_labels(layouts)[1].tolist() == ["tp 1", "tp 2"]
    # nothing varies: the strategy names the row
    axes, labels = configuration_labels(configs.iloc[:1])
    assert (axes, labels.tolist()) == ([], ["ddp"])


def test_trends_keep_configurations_apart_that_differ_only_in_micro_batch():
    past = pd.DataFrame([run(micro_batch_size=mb, sweep_id=f"night{i}", sweep_date=f"2026-11-0{i}",
                             tokens_per_s_per_device=v * mb)
                         for i, v in ((1, 100.0), (2, 110.0)) for mb in (2.0, 4.0)])
    past["config_key"] = past.config_json.map(configuration_key)
    table = trends(past)["tiny"]
    assert list(table.columns) == ["mb 2", "mb 4"]
    assert table["mb 4"].tolist() == [400.0, 440.0]


def test_the_memory_table_names_the_optimizer_of_the_default_sweep():
    # the default sweep: strategies x optimizers; each strategy's two rows looked identical
    configs = pd.DataFrame([run(strategy=s, optimizer=o, accelerator="cpu", model_state_bytes_predicted=1.0,
                                deepspeed_estimate_bytes=None, comm_bytes_per_step_json=None,
                                comm_bytes_per_step_predicted=None)
                            for s in ("ddp", "zero1") for o in ("adamw", "sgd_momentum")])
    table = model_vs_measured(configs, [0.9, 4.0])
    assert list(zip(table.strategy, table.configuration)) == [
        ("ddp", "adamw"), ("ddp", "sgd_momentum"), ("zero1", "adamw"), ("zero1", "sgd_momentum")]


def straggler_run(run_id, times, hosts, cv, forward_cv=None, **values):
    ranks = {"hosts": hosts, "forward_time_s": times}
    if forward_cv is not None:
        ranks["forward_time_cv"] = forward_cv
    return run(run_id=run_id, workload="train", step_time_cv=cv, world_size=len(times),
               per_rank_json=json.dumps(ranks), **values)


def test_the_slowest_rank_is_a_straggler_only_beyond_the_runs_own_noise():
    frame = pd.DataFrame([
        # rank 2 (on b) against the median of 0.010, 0.011, 0.0105: 0.020 / 0.0105 - 1 = 90.5%
        straggler_run("r1", [0.010, 0.011, 0.020, 0.0105], ["a", "a", "b", "b"], cv=0.02),
        # 8% slower: under the 10% floor
        straggler_run("r2", [0.010, 0.0108], ["a", "b"], cv=0.01),
        # 30% slower with a CV of 5%: threshold max(10%, 3 x 5%) = 15%: flagged, rank 1 on b again
        straggler_run("r3", [0.010, 0.013], ["a", "b"], cv=0.05),
        # 30% slower, but the run's own steps vary by 12%: threshold 36%, not flagged
        straggler_run("r4", [0.010, 0.013], ["a", "c"], cv=0.12),
        # the pipeline engine's runs have no forward time; one rank has no peers
        straggler_run("r5", [None, None], ["a", "b"], cv=0.01),
        straggler_run("r6", [0.010], ["a"], cv=0.01),
        straggler_run("r7", [0.010, 0.030], ["a", "b"], cv=0.01, status="error"),
        # 30% slower and steady steps, but each rank's forward passes vary by 15% (median over
        # ranks of 0.10, 0.15, 0.20): threshold 45%
        straggler_run("r8", [0.010, 0.013, 0.010], ["a", "b", "b"], cv=0.02, forward_cv=[0.10, 0.20, 0.15]),
        # flagged, but all its ranks share one node: no node is a suspect
        straggler_run("r9", [0.010, 0.020], ["a", "a"], cv=0.01)])
    runs, nodes = stragglers(frame, min_excess=0.10, noise_sigmas=3.0)
    runs = runs.set_index("run_id")
    assert list(runs.index) == ["r1", "r2", "r3", "r4", "r8", "r9"]
    assert runs.loc["r8", "threshold"] == pytest.approx(0.45)
    assert runs.loc["r1", "excess"] == pytest.approx(0.020 / 0.0105 - 1)
    assert (runs.loc["r1", "slowest_rank"], runs.loc["r1", "slowest_host"]) == (2, "b")
    assert runs.loc["r3", "threshold"] == pytest.approx(0.15)
    assert runs.loc["r4", "threshold"] == pytest.approx(0.36)
    assert runs.flagged.to_dict() == {"r1": True, "r2": False, "r3": True, "r4": False, "r8": False, "r9": True}
    nodes = nodes.set_index("host")
    assert nodes.runs.to_dict() == {"a": 5, "b": 4, "c": 1}
    assert nodes.flagged_runs.to_dict() == {"a": 0, "b": 2, "c": 0}
    assert nodes.slow.to_dict() == {"a": False, "b": True, "c": False}  # flagged in 2 runs


def micro_run(run_id, hosts, gemm=None, intra=None, inter=None):
    rows = {"gemm": [{"dtype": "fp32", "n": 256, "tflops": t} for t in (gemm or [])],
            "collectives": [{"op": "all_reduce", "scope": scope, "busbw_gbps": v}
                            for scope, values in (("intra_node", intra or []), ("inter_node", inter or []))
                            for v in values]
                           + [{"op": "all_gather", "scope": "intra_node", "busbw_gbps": 99.0}]}
    return run(run_id=run_id, workload="preflight", world_size=len(hosts),
               per_rank_json=json.dumps({"hosts": hosts}), micro_json=json.dumps(rows))


def test_preflight_flags_the_node_below_the_others_beyond_the_noise():
    frame = pd.DataFrame([
        micro_run("n1", ["n1", "n1"], gemm=[4.0, 10.0], intra=[1.0, 2.0]),
        micro_run("n2", ["n2", "n2"], gemm=[9.5], intra=[2.0]),
        micro_run("n3", ["n3", "n3"], gemm=[5.0], intra=[1.9]),
        micro_run("all", ["n1", "n1", "n2", "n2"], intra=[1.5], inter=[0.25, 0.5])])
    nodes, together = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)
    nodes = nodes.set_index("host")
    # GEMM: the largest per node (10, 9.5, 5), each over the median of the other two;
    # all_gather's rows are not read
    assert nodes.gemm_tflops.to_dict() == {"n1": 10.0, "n2": 9.5, "n3": 5.0}
    assert nodes.gemm_vs_others.to_dict() == pytest.approx({"n1": 10 / 7.25, "n2": 9.5 / 7.5, "n3": 5 / 9.75})
    assert nodes.busbw_gbps.to_dict() == {"n1": 2.0, "n2": 2.0, "n3": 1.9}
    assert nodes.busbw_vs_others.to_dict() == pytest.approx({"n1": 2 / 1.95, "n2": 2 / 1.95, "n3": 0.95})
    # one run per node: no noise measured, the 10% tolerance decides
    assert nodes.flagged.to_dict() == {"n1": False, "n2": False, "n3": True}
    assert together.to_dict("records") == [{"run_id": "all", "nodes": 2, "world_size": 4,
                                            "busbw_intra_node_gbps": 1.5, "busbw_inter_node_gbps": 0.5}]
    # one node alone is no comparison
    alone, _ = node_preflight(frame[frame.run_id == "n1"], tolerance=0.10, noise_sigmas=3.0)
    assert alone.empty


def test_preflight_needs_a_larger_gap_when_repeated_runs_disagree():
    # n1's three GEMM runs: 8, 10, 12 (sample std 2, CV 20%); n2's: 9, 10, 11 (CV 10%); the
    # noise is the median CV over nodes that have repeats, 15%: threshold max(10%, 3 x 15%) = 45%
    frame = pd.DataFrame([micro_run(f"{h}{i}", [h, h], gemm=[g], intra=[2.0])
                          for h, gemms in (("n1", [8.0, 10.0, 12.0]), ("n2", [9.0, 10.0, 11.0]),
                                           ("n3", [6.0]), ("n4", [5.0]))
                          for i, g in enumerate(gemms)])
    nodes = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)[0].set_index("host")
    # n3 at 6 / median(10, 10, 5) = 60% is within the noise; n4 at 5 / 10 = 50% is not
    assert nodes.gemm_vs_others.to_dict() == pytest.approx({"n1": 10 / 6, "n2": 10 / 6, "n3": 0.6, "n4": 0.5})
    assert nodes.flagged.to_dict() == {"n1": False, "n2": False, "n3": False, "n4": True}
    assert nodes.threshold.iloc[0] == "GEMM 45%, busbw 10%"


def test_best_configuration_with_headroom_and_margin():
    configs = aggregate_repeats(pd.DataFrame([
        run(strategy="ddp", tokens_per_s_per_device=120.0, peak_memory_bytes=700.0),
        run(strategy="zero1", tokens_per_s_per_device=100.0),
        run(strategy="zero2", world_size=2, tokens_per_s_per_device=80.0)]), max_cv=0.05)
    best = best_configurations(configs).set_index("world_size")
    assert best.loc[1, "configuration"].startswith("ddp")
    assert best.loc[1, "margin"] == pytest.approx(0.2)  # 120 / 100 - 1
    assert best.loc[1, "memory_headroom_bytes"] == 300.0  # 1000 - 700
    assert pd.isna(best.loc[2, "runner_up"])  # alone in its world size


def history(values, strategy="ddp", start=1):
    return pd.DataFrame([run(strategy=strategy, sweep_id=f"night{i}", tokens_per_s_per_device=v,
                             finished_at=f"2026-11-{i:02d}T00:00:00", env_deepspeed="0.19.8")
                         for i, v in enumerate(values, start)])


def test_a_real_drop_is_a_regression_and_noise_is_not():
    past = pd.concat([history([100, 102, 98, 101, 99]), history([100, 130, 70, 120, 80], "zero1")])
    past["config_key"] = past.config_json.map(configuration_key)
    now = aggregate_repeats(pd.DataFrame([
        run(strategy="ddp", sweep_id="tonight", tokens_per_s_per_device=90.0, env_deepspeed="0.20.0"),
        run(strategy="zero1", sweep_id="tonight", tokens_per_s_per_device=75.0, env_deepspeed="0.20.0")]), 0.05)
    verdicts = regressions(now, past, window=7, min_drop=0.05, noise_sigmas=3.0).set_index("strategy")
    # ddp: baseline median 100; |dev| 0,2,2,1,1 -> MAD 1 -> noise 1.4826; allowed max(5, 4.45) = 5
    assert verdicts.loc["ddp", "baseline"] == 100.0
    assert verdicts.loc["ddp", "noise"] == pytest.approx(1.4826)
    assert verdicts.loc["ddp", "allowed_drop"] == pytest.approx(5.0)
    assert verdicts.loc["ddp", "verdict"] == "regression"   # 90 < 95
    assert verdicts.loc["ddp", "change"] == pytest.approx(-0.10)
    assert "deepspeed: 0.19.8 -> 0.20.0" in verdicts.loc["ddp", "what_changed"]
    # zero1: baseline 100; |dev| 0,30,30,20,20 -> MAD 20 -> noise 29.652; allowed 88.96: 75 is noise
    assert verdicts.loc["zero1", "noise"] == pytest.approx(29.652)
    assert verdicts.loc["zero1", "verdict"] == "unchanged"


def test_the_registrys_direction_decides_what_a_regression_is():
    """Step time: less is better, so a rise beyond the allowance is the regression."""
    past = pd.DataFrame([run(sweep_id=f"night{i}", step_time_median_s=v, tokens_per_s_per_device=100.0,
                             finished_at=f"2026-11-{i:02d}T00:00:00") for i, v in enumerate([1.0, 1.0, 1.0], 1)])
    past["config_key"] = past.config_json.map(configuration_key)
    for tonight, verdict in ((1.2, "regression"), (0.8, "improvement"), (1.02, "unchanged")):
        now = aggregate_repeats(pd.DataFrame([run(sweep_id="tonight", step_time_median_s=tonight,
                                                  tokens_per_s_per_device=100.0)]), 0.05)
        # baseline 1.0, noise 0: allowed = 5% of 1.0
        got = regressions(now, past, metric="step_time_median_s", min_drop=0.05, noise_sigmas=3.0)
        assert got.verdict.tolist() == [verdict], tonight


def test_a_noisy_history_cannot_hide_a_halving():
    # two nights 60 and 140: baseline 100, |dev| 40, 40 -> noise 59.30, 3 sigmas 177.9 > baseline;
    # capped at 0.5 x 100 = 50, so 45 is a regression and 55 is not
    past = history([60, 140])
    past["config_key"] = past.config_json.map(configuration_key)
    for value, verdict in ((45.0, "regression"), (55.0, "unchanged")):
        now = aggregate_repeats(pd.DataFrame([run(sweep_id="tonight", tokens_per_s_per_device=value)]), 0.05)
        row = regressions(now, past, window=7, min_drop=0.05, noise_sigmas=3.0, max_allowed_drop=0.5).iloc[0]
        assert row.noise == pytest.approx(59.304)
        assert (row.allowed_drop, row.verdict) == (pytest.approx(50.0), verdict)


def test_window_takes_the_latest_nights_and_improvements_count():
    past = history([50, 50, 50, 100, 100, 100])
    past["config_key"] = past.config_json.map(configuration_key)
    now = aggregate_repeats(pd.DataFrame([run(sweep_id="tonight", tokens_per_s_per_device=120.0)]), 0.05)
    verdict = regressions(now, past, window=3).iloc[0]
    assert (verdict.baseline, verdict.nights, verdict.verdict) == (100.0, 3, "improvement")


def test_environment_diff_names_every_changed_field():
    before = pd.Series({"env_torch": "2.13.0", "env_nccl": None, "env_hostnames": '["a"]',
                        "env_variables": json.dumps({"NCCL_ALGO": "Ring", "MASTER_PORT": "1"})})
    after = pd.Series({"env_torch": "2.14.1", "env_nccl": None, "env_hostnames": '["b"]',
                       "env_variables": json.dumps({"NCCL_ALGO": "Tree", "MASTER_PORT": "2",
                                                    "SUITE_TEST_SLOWDOWN_S": "0.1"})})
    assert environment_diff(before, after) == (
        'torch: 2.13.0 -> 2.14.1; hostnames: ["a"] -> ["b"]; NCCL_ALGO: Ring -> Tree; '
        "SUITE_TEST_SLOWDOWN_S: None -> 0.1")


def test_per_job_values_are_no_change_in_the_environment():
    # issue 16: every Slurm job has its own ids, array task, rendezvous address and port
    before = pd.Series({"env_variables": json.dumps({
        "SLURM_JOB_ID": "101", "SLURM_JOBID": "101", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_JOB_START_TIME": "1", "MASTER_ADDR": "node1",
        "MASTER_PORT": "29500", "SLURM_NNODES": "1", "NCCL_ALGO": "Ring"})})
    after = pd.Series({"env_variables": json.dumps({
        "SLURM_JOB_ID": "205", "SLURM_JOBID": "205", "SLURM_ARRAY_JOB_ID": "203", "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_JOB_START_TIME": "9", "MASTER_ADDR": "node7",
        "MASTER_PORT": "29611", "SLURM_NNODES": "2", "NCCL_ALGO": "Ring"})})
    assert environment_diff(before, after) == "SLURM_NNODES: 1 -> 2"


def test_history_loads_sweeps_of_other_suite_versions_as_one_frame(tmp_path):
    from suite.report import history

    new = pd.DataFrame([run(sweep_id="new", sweep_date="2026-11-02", tokens_per_s_per_device=v, status=s,
                            env_nccl="2.21") for v, s in ((100.0, "ok"), (None, "error"))])
    new["config_key"] = new.config_json.map(configuration_key)
    # an early sweep: no config_key column (derived from config_json on load), no env_nccl
    old = pd.DataFrame([run(sweep_id="old", sweep_date="2026-11-01", tokens_per_s_per_device=90.0)])
    assert history.append(tmp_path, old) == 1 and history.append(tmp_path, new) == 2
    history.append(tmp_path, new)  # the same sweep again replaces its file
    rows = history.load(tmp_path, history.COLUMNS, ok_only=True).sort_values("sweep_id")
    assert rows.sweep_id.tolist() == ["new", "old"] and rows.sweep_date.tolist() == ["2026-11-02", "2026-11-01"]
    assert rows.tokens_per_s_per_device.tolist() == [100.0, 90.0]
    assert rows.config_key.nunique() == 1  # the same configuration, whichever way its key came
    assert rows.env_nccl.isna().tolist() == [False, True]
    assert len(history.load(tmp_path)) == 3


def test_a_record_from_before_model_families_is_the_same_configuration():
    from dataclasses import asdict

    from suite.config import SuiteConfig

    new = asdict(SuiteConfig())
    new.pop("submit"), new.pop("report")
    old = json.loads(json.dumps(new))
    for field in ("family", "n_kv_heads", "ffn_dim", "tie_embeddings", "rope_theta", "norm_eps"):
        del old["model"][field]  # the schema had none of these
    old["workload"]["name"] = "gpt"  # the training workload's name then
    assert configuration_key(json.dumps(old)) == configuration_key(json.dumps(new))
    # a field that differs from its default still makes another configuration
    llama = json.loads(json.dumps(new))
    llama["model"]["family"] = "llama"
    assert configuration_key(json.dumps(llama)) != configuration_key(json.dumps(new))


def test_a_record_that_redacted_token_dtype_is_the_same_configuration_as_a_new_one():
    """Records before the fix held data.token_dtype="<redacted>": last night's runs must still
    be the same configurations as tonight's, or every regression check loses its history."""
    old = json.dumps({"data": {"name": "synthetic", "token_dtype": "<redacted>"}})
    new = json.dumps({"data": {"name": "synthetic", "token_dtype": "uint16"}})
    other = json.dumps({"data": {"name": "synthetic", "token_dtype": "uint32"}})
    assert configuration_key(old) == configuration_key(new) != configuration_key(other)


def test_the_measured_peak_is_judged_against_the_memory_model_on_gpus_only():
    base = dict(model="m", strategy="zero3", world_size=8, model_state_bytes_predicted=50.0,
                deepspeed_estimate_bytes=None, comm_bytes_per_step_json=None, comm_bytes_per_step_predicted=None)
    configs = pd.DataFrame([
        {**base, "accelerator": "cuda", "peak_memory_bytes": 105.0, "memory_predicted_bytes": 100.0},
        {**base, "accelerator": "cuda", "peak_memory_bytes": 120.0, "memory_predicted_bytes": 100.0},
        {**base, "accelerator": "cpu", "peak_memory_bytes": 900.0, "memory_predicted_bytes": 100.0}])
    table = model_vs_measured(configs, [0.9, 4.0])
    assert table.configuration.tolist() == ["cpu", "cuda", "cuda"]  # rows in order
    assert list(table.peak_ratio[1:]) == [1.05, 1.2] and pd.isna(table.peak_ratio[0])
    # 1.05 is inside the 10% allocator allowance; 1.2 means the model under-predicts
    assert table.flag[1] == "" and table.flag[2] == "peak 1.20x the memory model: it under-predicts"
    assert table.flag[0] == ""  # the CPU's resident set includes the runtime: not compared


# ---- micro-benchmark ceilings --------------------------------------------------------------

def micro_record(run_id, workload, micro, status="ok", device="NVIDIA H100 80GB HBM3", world_size=1):
    return run(run_id=run_id, workload=workload, status=status, env_device_name=device, world_size=world_size,
               micro_json=None if micro is None else json.dumps(micro))


def test_ceilings_list_every_gemm_shape_and_collective_size_of_the_sweeps_ok_micro_runs():
    from suite.report.analysis import measured_ceilings

    frame = pd.DataFrame([
        micro_record("g", "gemm", {"gemm": [{"dtype": "fp32", "n": 1024, "tflops": 40.0},
                                            {"dtype": "bf16", "n": 4096, "tflops": 600.0}]}),
        micro_record("a", "allreduce", {"collectives": [{"op": "all_reduce", "size_bytes": 1024,
                                                         "busbw_gbps": 90.0}]}, world_size=8),
        # a training run, a failed GEMM run and a run without micro figures add no row
        micro_record("t", "train", None),
        micro_record("f", "gemm", {"gemm": [{"dtype": "fp32", "n": 1024, "tflops": 999.0}]}, status="error"),
        micro_record("p", "preflight", None)])
    table = measured_ceilings(frame)
    assert list(table.columns) == ["kind", "device", "world_size", "dtype", "n", "tflops", "op", "size_bytes",
                                   "busbw_gbps"]
    assert table.kind.tolist() == ["gemm", "gemm", "collective"]
    assert table.device.tolist() == ["NVIDIA H100 80GB HBM3"] * 3 and table.world_size.tolist() == [1, 1, 8]
    assert table.dtype.tolist()[:2] == ["fp32", "bf16"] and table.tflops.tolist()[:2] == [40.0, 600.0]
    assert (table.op[2], table.size_bytes[2], table.busbw_gbps[2]) == ("all_reduce", 1024, 90.0)
    assert measured_ceilings(frame[frame.workload == "train"]).empty


def test_share_of_gemm_ceiling_is_against_the_largest_gemm_of_the_configurations_dtype():
    from suite.report.analysis import measured_ceilings, of_gemm_ceiling

    ceilings = measured_ceilings(pd.DataFrame([
        micro_record("g1", "gemm", {"gemm": [{"dtype": "fp32", "n": 1024, "tflops": 40.0},
                                             {"dtype": "fp32", "n": 4096, "tflops": 50.0},
                                             {"dtype": "bf16", "n": 4096, "tflops": 500.0}]}),
        micro_record("a", "allreduce", {"collectives": [{"op": "all_reduce", "busbw_gbps": 90.0}]})]))
    configs = pd.DataFrame({"strategy": ["ddp", "zero1", "zero2"], "precision": ["fp32", "bf16", "fp16"],
                            "tflops_per_device": [25.0, 400.0, 300.0]}).set_index("strategy")
    shares = of_gemm_ceiling(configs, ceilings)
    # 25 / max(40, 50) = 0.5; 400 / 500 = 0.8; no fp16 GEMM measured: null
    assert shares.index.tolist() == ["ddp", "zero1", "zero2"]
    assert shares.iloc[:2].tolist() == pytest.approx([0.5, 0.8]) and pd.isna(shares["zero2"])
    # a sweep without GEMM runs: every share null (a float column all the same)
    none = of_gemm_ceiling(configs, measured_ceilings(pd.DataFrame([micro_record("t", "train", None)])))
    assert none.dtype == "float64" and none.isna().all() and none.index.tolist() == ["ddp", "zero1", "zero2"]


def test_a_run_over_nodes_without_an_inter_node_all_reduce_shows_no_inter_node_bandwidth():
    frame = pd.DataFrame([micro_run("n1", ["n1", "n1"], gemm=[10.0], intra=[2.0]),
                          micro_run("n2", ["n2", "n2"], gemm=[10.0]),   # its all_reduce missing
                          micro_run("all", ["n1", "n1", "n2", "n2"], intra=[1.5])])
    nodes, together = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)
    assert together.busbw_inter_node_gbps.isna().tolist() == [True]
    assert together.busbw_intra_node_gbps.tolist() == [1.5]
    # n2 has no bus bandwidth of its own: n1's share has no other node to compare with
    assert nodes.set_index("host").busbw_gbps.isna().to_dict() == {"n1": False, "n2": True}


def test_preflight_noise_is_measured_from_two_runs_per_node():
    # n1's GEMM runs 8 and 12: std 2.83, mean 10, CV 28.3%; n2's 9.5, 10.5: CV 7.07%; median CV
    # 17.7%, threshold max(10%, 3 x 17.7%) = 53%: n3 at 4 / 10 = 40% is flagged, n4 at 6 / 10 is not
    frame = pd.DataFrame([micro_run(f"{h}{i}", [h, h], gemm=[g], intra=[2.0])
                          for h, gemms in (("n1", [8.0, 12.0]), ("n2", [9.5, 10.5]), ("n3", [4.0]), ("n4", [6.0]))
                          for i, g in enumerate(gemms)])
    nodes = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)[0].set_index("host")
    assert nodes.threshold.iloc[0] == "GEMM 53%, busbw 10%"
    assert nodes.flagged.to_dict() == {"n1": False, "n2": False, "n3": True, "n4": False}


# ---- what changed between nights -------------------------------------------------------------

def test_a_field_that_appears_or_disappears_is_a_change_and_missing_variables_are_none():
    before = pd.Series({"env_cuda": "12.4", "env_nccl": None, "env_driver": float("nan"),
                        "env_variables": float("nan")})   # an early record: no variables
    after = pd.Series({"env_cuda": None, "env_nccl": "2.21", "env_driver": None,
                       "env_variables": json.dumps({"NCCL_ALGO": "Tree"})})
    # the driver is missing on both sides: no change (a missing value prints as the frame holds it)
    assert environment_diff(before, after) == "cuda: 12.4 -> nan; nccl: nan -> 2.21; NCCL_ALGO: None -> Tree"
    no_variables = after.copy()
    no_variables["env_variables"] = pd.NA  # how a frame holds a record without them
    assert environment_diff(no_variables, after) == "NCCL_ALGO: None -> Tree"


def test_trends_take_the_median_of_a_nights_repeats():
    # night 2 ran three repeats: 90, 100, 140 -> median 100 (their mean, 110, would be pulled by one)
    past = pd.DataFrame([run(sweep_id=f"night{i}", sweep_date=f"2026-11-0{i}", repeat_index=k,
                             tokens_per_s_per_device=v)
                         for i, values in ((1, [80.0]), (2, [90.0, 100.0, 140.0])) for k, v in enumerate(values)])
    past["config_key"] = past.config_json.map(configuration_key)
    assert trends(past)["tiny"]["ddp"].tolist() == [80.0, 100.0]


def test_trends_name_configurations_no_axis_tells_apart_by_their_key():
    # two configurations apart only in a field that is no axis (the learning rate): both would be
    # "ddp", so each carries the first 6 characters of its key
    rows = []
    for lr in (1e-3, 1e-4):
        r = run(tokens_per_s_per_device=100.0 if lr == 1e-3 else 50.0, sweep_date="2026-11-01")
        config = json.loads(r["config_json"])
        config["train"]["lr"] = lr
        rows.append({**r, "config_json": json.dumps(config)})
    past = pd.DataFrame(rows)
    past["config_key"] = past.config_json.map(configuration_key)
    fast, slow = past.config_key
    table = trends(past)["tiny"]
    assert sorted(table.columns) == sorted([f"ddp #{fast[:6]}", f"ddp #{slow[:6]}"])
    assert (table[f"ddp #{fast[:6]}"].tolist(), table[f"ddp #{slow[:6]}"].tolist()) == ([100.0], [50.0])


def test_trends_label_a_configuration_by_its_latest_night():
    # night 1 came from a suite before the compile axis (null there); night 2 has it. ddp ran
    # both nights, zero1 only the second: by their latest nights neither is compiled, so the
    # strategy alone tells them apart (by night 1, ddp's "compiled —" would look like an axis)
    past = pd.DataFrame([run(strategy="ddp", sweep_id="night1", sweep_date="2026-11-01", compile=None,
                             tokens_per_s_per_device=100.0),
                         run(strategy="ddp", sweep_id="night2", sweep_date="2026-11-02", compile=False,
                             tokens_per_s_per_device=110.0),
                         run(strategy="zero1", sweep_id="night2", sweep_date="2026-11-02", compile=False,
                             tokens_per_s_per_device=90.0)])
    past["config_key"] = past.config_json.map(configuration_key)
    assert list(trends(past)["tiny"].columns) == ["ddp", "zero1"]


def tonight(**values):
    return run(sweep_id="tonight", finished_at="2026-11-30T00:00:00", **values)


def nights(values, **axes):
    """One configuration's history: one run per night, 1 November on."""
    frame = pd.DataFrame([run(sweep_id=f"night{i}", finished_at=f"2026-11-{i:02d}T00:00:00",
                              tokens_per_s_per_device=v, **axes) for i, v in enumerate(values, 1)])
    frame["config_key"] = frame.config_json.map(configuration_key)
    return frame


def test_regressions_name_only_the_axes_the_table_does_not_show():
    # model, strategy, optimizer, precision and ranks have columns of their own: the two
    # configurations differ in all of them and in the micro-batch, which alone is named
    a = dict(micro_batch_size=2)
    b = dict(model="small", strategy="zero1", optimizer="sgd_momentum", precision="bf16", world_size=2,
             micro_batch_size=4)
    past = pd.concat([nights([100.0, 100.0], **a), nights([100.0, 100.0], **b)])
    now = aggregate_repeats(pd.DataFrame([tonight(tokens_per_s_per_device=100.0, **a),
                                          tonight(tokens_per_s_per_device=100.0, **b)]), 0.05)
    got = regressions(now, past, window=7, min_drop=0.05, noise_sigmas=3.0).set_index("model")
    assert got.configuration.to_dict() == {"tiny": "mb 2", "small": "mb 4"}
    # one configuration: nothing to name
    alone = aggregate_repeats(pd.DataFrame([tonight(tokens_per_s_per_device=100.0, **a)]), 0.05)
    assert regressions(alone, past, window=7, min_drop=0.05, noise_sigmas=3.0).configuration.tolist() == [""]


def test_the_first_night_and_a_new_configuration_have_nothing_to_regress_against():
    now = aggregate_repeats(pd.DataFrame([tonight(tokens_per_s_per_device=50.0),
                                          tonight(strategy="zero1", tokens_per_s_per_device=10.0)]), 0.05)
    first = regressions(now, now.iloc[:0], window=7, min_drop=0.05, noise_sigmas=3.0)
    assert first.empty and list(first.columns) == REGRESSION_COLUMNS
    # a history of ddp only: zero1 is new tonight and is no row (not an "unchanged" one)
    got = regressions(now, nights([100.0, 100.0]), window=7, min_drop=0.05, noise_sigmas=3.0)
    assert (got.strategy.tolist(), got.verdict.tolist()) == (["ddp"], ["regression"])
    # nothing measured tonight
    none = regressions(now.iloc[:0], nights([100.0]), window=7, min_drop=0.05, noise_sigmas=3.0)
    assert none.empty and list(none.columns) == REGRESSION_COLUMNS


def test_a_change_of_exactly_the_allowance_is_unchanged():
    # baseline 100, no noise: allowed 5% = 5, and only a value beyond 95 or 105 counts
    for value in (95.0, 105.0):
        now = aggregate_repeats(pd.DataFrame([tonight(tokens_per_s_per_device=value)]), 0.05)
        got = regressions(now, nights([100.0, 100.0, 100.0]), window=7, min_drop=0.05, noise_sigmas=3.0)
        assert (got.allowed_drop[0], got.verdict[0]) == (5.0, "unchanged"), value


def test_what_changed_is_told_for_regressions_and_improvements_only():
    past = pd.concat([nights([100.0, 100.0], env_torch="2.13.0"),
                      nights([100.0, 100.0], strategy="zero1", env_torch="2.13.0"),
                      nights([100.0, 100.0], strategy="zero2", env_torch="2.13.0")])
    now = aggregate_repeats(pd.DataFrame([tonight(tokens_per_s_per_device=80.0, env_torch="2.14.1"),
                                          tonight(strategy="zero1", tokens_per_s_per_device=101.0, env_torch="2.14.1"),
                                          tonight(strategy="zero2", tokens_per_s_per_device=120.0,
                                                  env_torch="2.14.1")]),
                            0.05)
    got = regressions(now, past, window=7, min_drop=0.05, noise_sigmas=3.0).set_index("strategy")
    assert got.verdict.to_dict() == {"ddp": "regression", "zero1": "unchanged", "zero2": "improvement"}
    assert got.what_changed.to_dict() == {"ddp": "torch: 2.13.0 -> 2.14.1", "zero1": "",
                                          "zero2": "torch: 2.13.0 -> 2.14.1"}


def test_what_changed_compares_with_one_run_of_a_repeated_baseline_night():
    # the latest night ran two repeats (98 and 102): the change is told once, not per repeat
    past = pd.DataFrame([run(sweep_id=f"night{i}", repeat_index=k, finished_at=f"2026-11-0{i}T00:0{k}:00",
                             tokens_per_s_per_device=v, env_deepspeed="0.19.8")
                         for i in (1, 2) for k, v in enumerate([98.0, 102.0])])
    past["config_key"] = past.config_json.map(configuration_key)
    now = aggregate_repeats(pd.DataFrame([tonight(tokens_per_s_per_device=80.0, env_deepspeed="0.20.0")]), 0.05)
    got = regressions(now, past, window=7, min_drop=0.05, noise_sigmas=3.0)
    assert (got.verdict[0], got.what_changed[0]) == ("regression", "deepspeed: 0.19.8 -> 0.20.0")
    # the night's last run is the one compared (here its second repeat ran another DeepSpeed)
    past.loc[past.repeat_index == 1, "env_deepspeed"] = "0.19.9"
    got = regressions(now, past, window=7, min_drop=0.05, noise_sigmas=3.0)
    assert got.what_changed[0] == "deepspeed: 0.19.9 -> 0.20.0"


# ---- loss parity -----------------------------------------------------------------------------

PARITY_COLUMNS = ["model", "strategy", "optimizer", "precision", "activation_checkpointing", "data_parallel",
                  "tensor_parallel", "pipeline_parallel", "sequence_parallel", "configuration", "max_abs_diff",
                  "tolerance", "matches"]


def parity_run(strategy, zero, losses, **values):
    """A run in parity mode: plain data parallel unless told otherwise."""
    base = dict(check_parity=True, engine="deepspeed", zero_stage=zero, tensor_parallel=1, pipeline_parallel=1,
                sequence_parallel=1, data_parallel=2, world_size=2, global_batch_size=8, offload_optimizer=False,
                activation_checkpointing="none", loss_per_step_json=None if losses is None else json.dumps(losses))
    return run(strategy=strategy, **{**base, **values})


def test_parity_is_against_the_plain_data_parallel_run_wherever_it_stands():
    from suite.report.analysis import parity_table

    frame = pd.DataFrame([
        # zero2 ahead of ddp in the frame, 1e-2 off it: it is compared, never the reference
        parity_run("zero2", 2, [10.0, 9.01]),
        parity_run("zero1", 1, [10.0, 9.00005]),
        parity_run("ddp", 0, [10.0, 9.0]),
        # a record from before the engine and sequence-parallel axes: plain DeepSpeed
        parity_run("ddp", 0, [5.0, 4.0], model="small", engine=None, sequence_parallel=None),
        parity_run("zero3", 3, [5.0, 4.00002], model="small"),
        parity_run("ddp", 0, [9.0], check_parity=None)])   # not in parity mode: no row
    table = parity_table(frame)
    assert list(table.columns) == PARITY_COLUMNS
    got = table.set_index(["model", "strategy"])
    # fp32 tolerance 1e-4: 9.01 is 1e-2 off ddp's 9.0; 9.00005 is 5e-5 off; zero3 2e-5 off small's ddp
    assert got.max_abs_diff.to_dict() == pytest.approx({
        ("small", "ddp"): 0.0, ("small", "zero3"): 2e-5, ("tiny", "ddp"): 0.0, ("tiny", "zero1"): 5e-5,
        ("tiny", "zero2"): 1e-2})
    assert got.matches.to_dict() == {("small", "ddp"): "yes", ("small", "zero3"): "yes", ("tiny", "ddp"): "yes",
                                     ("tiny", "zero1"): "yes", ("tiny", "zero2"): "NO"}
    assert set(got.tolerance) == {1e-4}
    assert set(got.configuration) == {""}   # nothing but the shown columns varies


def test_parity_prefers_the_reference_without_recomputation_and_names_other_axes():
    from suite.report.analysis import parity_table

    frame = pd.DataFrame([
        # two plain runs; recomputation changes no maths, but the run without it is the reference
        parity_run("ddp", 0, [10.0, 9.00003], activation_checkpointing="full", micro_batch_size=4),
        parity_run("ddp", 0, [10.0, 9.0], micro_batch_size=4),
        parity_run("zero2", 2, [10.0, 9.00001], micro_batch_size=2)])
    table = parity_table(frame).set_index(["strategy", "activation_checkpointing"])
    assert table.max_abs_diff.to_dict() == pytest.approx({("ddp", "full"): 3e-5, ("ddp", "none"): 0.0,
                                                          ("zero2", "none"): 1e-5})
    # the micro-batch varies and has no column of its own: it is named
    assert table.configuration.to_dict() == {("ddp", "full"): "mb 4", ("ddp", "none"): "mb 4",
                                             ("zero2", "none"): "mb 2"}


def test_among_many_plain_runs_the_first_in_record_order_is_the_reference():
    from suite.report.analysis import parity_table

    # a recomputing run, then 19 plain repeats: the first of these (1 off the rest) is the
    # reference, whatever the sort does with the 19 tied runs behind it
    frame = pd.DataFrame([parity_run("ddp", 0, [10.0, 9.0], activation_checkpointing="full", repeat_index=0)]
                         + [parity_run("ddp", 0, [10.0, 9.0 if k == 1 else 8.0], repeat_index=k) for k in range(1, 20)])
    table = parity_table(frame)
    assert table.max_abs_diff.tolist() == [0.0, 0.0] + [1.0] * 18


def test_a_failed_run_or_one_without_a_reference_has_no_difference():
    from suite.report.analysis import parity_table

    frame = pd.DataFrame([
        parity_run("ddp", 0, [10.0, 9.0]),
        parity_run("zero2", 2, None, status="error"),
        # failed before it recorded its global batch: still shown as failed
        parity_run("zero3", 3, None, status="error", global_batch_size=None),
        # no plain run at 4 ranks: the ddp run failed, the offloaded one is no reference
        parity_run("ddp", 0, None, world_size=4, data_parallel=4, status="error"),
        parity_run("zero1", 0, [10.0, 9.0], world_size=4, data_parallel=4, offload_optimizer=True)])
    table = parity_table(frame).set_index(["strategy", "data_parallel"])
    assert table.matches.to_dict() == {("ddp", 2): "yes", ("zero2", 2): "run failed", ("zero3", 2): "run failed",
                                       ("ddp", 4): "run failed",
                                       ("zero1", 4): "no comparable ddp run: ddp ran on 2 ranks; this layout on 4"}
    unmatched = table.drop(index=[("ddp", 2)])
    assert unmatched.max_abs_diff.isna().all() and unmatched.tolerance.isna().all()
    # a sweep without parity runs: the table is empty, with its columns
    empty = parity_table(frame.assign(check_parity=False))
    assert empty.empty and list(empty.columns) == PARITY_COLUMNS


# ---- DeepSpeed beside PyTorch ----------------------------------------------------------------

ENGINE_COLUMNS = ["model", "world_size", "nodes", "precision", "optimizer", "micro_batch_size", "pair",
                  "deepspeed_tokens_per_s_per_device", "torch_tokens_per_s_per_device", "throughput_ratio",
                  "deepspeed_peak_memory_bytes", "torch_peak_memory_bytes", "memory_ratio",
                  "deepspeed_settings", "torch_settings"]


def engine_config(strategy, engine, zero, tokens, peak, **values):
    """One aggregated configuration of a plain layout (no TP/PP/SP, no offload) unless told."""
    base = dict(model="tiny", world_size=2, nodes=1, precision="bf16", optimizer="adamw", micro_batch_size=2.0,
                grad_accum_steps=1, activation_checkpointing="none", tensor_parallel=1, pipeline_parallel=1,
                sequence_parallel=1, offload_optimizer=False, offload_params=False)
    return {**base, "strategy": strategy, "engine": engine, "zero_stage": zero,
            "tokens_per_s_per_device": tokens, "peak_memory_bytes": peak, **values}


def test_each_torch_engine_is_set_beside_deepspeeds_plain_run_of_the_same_work():
    from suite.report.analysis import engine_comparison

    configs = pd.DataFrame([
        # not plain layouts, listed first so that one wrongly taken would be the DeepSpeed side
        engine_config("tp", "deepspeed", 0, 10.0, 100.0, tensor_parallel=2),
        engine_config("pp", "deepspeed", 0, 11.0, 100.0, pipeline_parallel=2),
        engine_config("sp", "deepspeed", 0, 12.0, 100.0, sequence_parallel=2),
        engine_config("zero3_offload", "deepspeed", 3, 13.0, 100.0, offload_optimizer=True),
        engine_config("zero3_offload_params", "deepspeed", 3, 14.0, 100.0, offload_params=True),
        engine_config("fsdp2_offload", "fsdp2", None, 15.0, 100.0, offload_params=True),
        # ZeRO-3 from a record before the engine, sequence-parallel, offload and node axes (all
        # null: DeepSpeed, no SP, no offload); it recorded no peak (0), so no memory ratio
        engine_config("zero3", None, 3, 80.0, 0.0, sequence_parallel=None, offload_optimizer=None,
                      offload_params=None, nodes=None),
        engine_config("zero2", "deepspeed", 2, 90.0, 700.0),  # DeepSpeed, but not ZeRO-0 nor ZeRO-3
        engine_config("ddp", "deepspeed", 0, 100.0, 1000.0),
        # torch DDP at micro-batch 4 has no DeepSpeed run of its work
        engine_config("torch_ddp", "torch_ddp", None, 300.0, 3000.0, micro_batch_size=4.0),
        engine_config("torch_ddp", "torch_ddp", None, 110.0, 900.0),
        engine_config("fsdp2", "fsdp2", None, 60.0, 400.0, nodes=None)])
    table = engine_comparison(configs)
    assert list(table.columns) == ENGINE_COLUMNS
    assert table.pair.tolist() == ["ZeRO-0 vs torch DDP", "ZeRO-3 vs FSDP2"]
    # torch DDP 110 against ZeRO-0's 100 tokens/s: 1.1x; peak 900 / 1000 = 0.9x.
    # FSDP2 60 against ZeRO-3's 80: 0.75x
    assert table.deepspeed_tokens_per_s_per_device.tolist() == [100.0, 80.0]
    assert table.torch_tokens_per_s_per_device.tolist() == [110.0, 60.0]
    assert table.throughput_ratio.tolist() == pytest.approx([1.1, 0.75])
    assert table.deepspeed_peak_memory_bytes.tolist() == [1000.0, 0.0]
    assert table.torch_peak_memory_bytes.tolist() == [900.0, 400.0]
    # configs without config_json (hand-made here): DeepSpeed's defaults are what they had
    assert table.deepspeed_settings.tolist()[0].startswith("ZeRO-0: one all-reduce")
    assert table.torch_settings.tolist()[1].startswith("reshard_after_forward on")
    assert table.memory_ratio[0] == pytest.approx(0.9) and pd.isna(table.memory_ratio[1])
    assert table[["model", "world_size", "precision", "optimizer", "micro_batch_size"]].to_dict("records") == [
        dict(model="tiny", world_size=2, precision="bf16", optimizer="adamw", micro_batch_size=2.0)] * 2
    assert table.nodes[0] == 1 and pd.isna(table.nodes[1])


def test_no_engine_comparison_without_a_torch_run_or_an_engine_axis():
    from suite.report.analysis import engine_comparison

    deepspeed_only = pd.DataFrame([engine_config("ddp", "deepspeed", 0, 100.0, 1000.0),
                                   engine_config("zero3", "deepspeed", 3, 80.0, 500.0)])
    # a sweep from before the engine axis; one with DeepSpeed only
    for configs in (deepspeed_only.drop(columns="engine"), deepspeed_only, deepspeed_only.iloc[:0]):
        table = engine_comparison(configs)
        assert table.empty and list(table.columns) == ENGINE_COLUMNS


# ---- the memory and communication models against the measurements -------------------------

def gpu_config(model, strategy, world_size, predicted, peak, memory_model, comm, comm_predicted, optimizer="adamw"):
    return dict(model=model, strategy=strategy, optimizer=optimizer, world_size=world_size, accelerator="cuda",
                model_state_bytes_predicted=predicted, deepspeed_estimate_bytes=2.0 * predicted,
                peak_memory_bytes=peak, memory_predicted_bytes=memory_model,
                comm_bytes_per_step_json=None if comm is None else json.dumps(comm),
                comm_bytes_per_step_predicted=comm_predicted)


def test_the_models_are_flagged_only_outside_their_bounds_and_every_flag_is_told():
    configs = pd.DataFrame([
        # peak 300 = 3.0 x the model states (shown, not judged) and 1.0 x the memory model;
        # on 2 ranks the logger's all_reduce message of 100 puts 2 x 1/2 x 100 = 100 bytes on the
        # wire, its all_gather shard of 50 another (2 - 1) x 50: 150 against the model's 75, 2.0
        gpu_config("tiny", "zero1", 2, 100.0, 300.0, 300.0, {"all_reduce": 100, "all_gather_into_tensor": 50}, 75.0),
        # 90 / 100 = 0.9 of the memory model, its lower bound; a reduce-scatter of a 50-byte
        # buffer on 4 ranks sends 3/4 x 50 = 37.5 bytes: 0.5 of the model's 75, the lower edge
        gpu_config("small", "zero2", 4, 100.0, 90.0, 100.0, {"reduce_scatter_tensor": 50}, 75.0,
                   optimizer="sgd_momentum"),
        # 500 / 100 = 5.0 of the memory model; an all_gather shard of 250 on 4 ranks: 3 x 250 =
        # 750 on the wire, 2.5 x the model's 300
        gpu_config("tiny", "zero3", 4, 100.0, 500.0, 100.0, {"all_gather_into_tensor": 250}, 300.0),
        # no model-state prediction (0) and nothing counted: no ratios; peak 110 / 100 is the 10%
        # allocator allowance exactly, not beyond it
        gpu_config("small", "ddp", 2, 0.0, 110.0, 100.0, None, 100.0)])
    table = model_vs_measured(configs, [0.9, 3.0])
    assert list(table.columns) == ["model", "strategy", "configuration", "world_size", "model_state_bytes_predicted",
                                   "deepspeed_estimate_bytes", "peak_memory_bytes", "memory_ratio",
                                   "memory_predicted_bytes", "peak_ratio", "comm_bytes_per_step_predicted",
                                   "comm_message_bytes_logged", "comm_bytes_per_step_counted", "comm_ratio", "flag"]
    # rows in order of model, world size, strategy
    assert table[["model", "strategy", "world_size"]].values.tolist() == [
        ["small", "ddp", 2], ["small", "zero2", 4], ["tiny", "zero1", 2], ["tiny", "zero3", 4]]
    assert table.flag.tolist() == ["", "", "", "peak 5.00x the memory model: it under-predicts; "
                                               "communication on the wire 2.50x model"]
    assert pd.isna(table.memory_ratio[0]) and table.memory_ratio[1:].tolist() == pytest.approx([0.9, 3.0, 5.0])
    assert pd.isna(table.comm_message_bytes_logged[0])
    assert table.comm_message_bytes_logged[1:].tolist() == [50, 150, 250]
    assert pd.isna(table.comm_bytes_per_step_counted[0])
    assert table.comm_bytes_per_step_counted[1:].tolist() == pytest.approx([37.5, 150.0, 750.0])
    assert pd.isna(table.comm_ratio[0]) and table.comm_ratio[1:].tolist() == pytest.approx([0.5, 2.0, 2.5])
    assert table.peak_ratio.tolist() == pytest.approx([1.1, 0.9, 1.0, 5.0])
    assert table.model_state_bytes_predicted.tolist() == [0.0, 100.0, 100.0, 100.0]
    assert table.deepspeed_estimate_bytes.tolist() == [0.0, 200.0, 200.0, 200.0]
    assert table.peak_memory_bytes.tolist() == [110.0, 90.0, 300.0, 500.0]
    assert table.memory_predicted_bytes.tolist() == [100.0, 100.0, 300.0, 100.0]
    assert table.comm_bytes_per_step_predicted.tolist() == [100.0, 75.0, 75.0, 300.0]
    # model, strategy and ranks have columns: only the optimizer is named
    assert table.configuration.tolist() == ["adamw", "sgd_momentum", "adamw", "adamw"]
    # nothing else varies: no name
    assert model_vs_measured(configs.iloc[:1], [0.9, 3.0]).configuration.tolist() == [""]


# ---- scaling studies ---------------------------------------------------------------------------

def test_the_scaling_table_carries_each_runs_figures_and_names_only_what_tells_studies_apart():
    weak = [("tiny", "ddp", 2, 1, [1000.0]), ("tiny", "ddp", 2, 2, [1800.0]),
            ("tiny", "ddp", 4, 1, [2000.0]), ("tiny", "ddp", 4, 2, [3000.0, 3600.0, 4200.0]),  # CV 16.7%
            ("small", "zero1", 2, 1, [500.0]), ("small", "zero1", 2, 2, [900.0])]
    rows = [run(model=m, strategy=s, scaling="weak", micro_batch_size=mb, world_size=n, global_batch_size=mb * n,
                repeat_index=k, tokens_per_s=t, tokens_per_s_per_device=t / n, step_time_median_s=mb / t * 100,
                # records from before the tensor-parallel axis (null) and, for small, the nodes axis
                tensor_parallel=None, nodes=None if m == "small" else 1)
            for m, s, mb, n, values in weak for k, t in enumerate(values)]
    table = scaling_table(aggregate_repeats(pd.DataFrame(rows), max_cv=0.05))
    assert list(table.columns) == ["model", "strategy", "mode", "configuration", "world_size", "nodes",
                                   "global_batch_size", "tokens_per_s", "tokens_per_s_per_device",
                                   "step_time_median_s", "speedup", "efficiency", "efficiency_low",
                                   "efficiency_high", "noisy", "noisy_reason"]
    # model and strategy have columns: of the rest only the micro-batch varies
    assert table[["model", "strategy", "configuration", "world_size"]].values.tolist() == [
        ["small", "zero1", "mb 2", 1], ["small", "zero1", "mb 2", 2], ["tiny", "ddp", "mb 2", 1],
        ["tiny", "ddp", "mb 2", 2], ["tiny", "ddp", "mb 4", 1], ["tiny", "ddp", "mb 4", 2]]
    assert table.global_batch_size.tolist() == [2, 4, 2, 4, 4, 8]
    # mb 4 at 2 ranks: the median of 3000, 3600, 4200 is 3600 tokens/s, 1800 per device
    assert table.tokens_per_s.tolist() == [500.0, 900.0, 1000.0, 1800.0, 2000.0, 3600.0]
    assert table.tokens_per_s_per_device.tolist() == [500.0, 450.0, 1000.0, 900.0, 2000.0, 1800.0]
    assert table.step_time_median_s.tolist() == pytest.approx([0.4, 2 / 9, 0.2, 1 / 9, 0.2, 4 / 36])
    assert table.efficiency.tolist() == pytest.approx([1.0, 0.9, 1.0, 0.9, 1.0, 0.9])
    assert table.noisy.tolist() == [False, False, False, False, False, True]   # CV 600 / 3600 > 5%
    assert table.nodes.isna().tolist() == [True, True, False, False, False, False]


def test_strong_studies_at_two_global_batches_are_told_apart_by_the_global_batch_column():
    # the global batch has a column of its own: no configuration name, and each is its own study
    rows = [run(scaling="strong", world_size=n, global_batch_size=g, step_time_median_s=t, tokens_per_s=g / t,
                tokens_per_s_per_device=g / t / n, config_key=f"gbs {g}, {n} ranks")
            for g, times in ((16, (4.0, 2.5)), (32, (8.0, 4.0))) for n, t in zip((1, 2), times)]
    table = scaling_table(aggregate_repeats(pd.DataFrame(rows), max_cv=0.05))
    assert table.configuration.tolist() == [""] * 4
    assert dict(zip(zip(table.global_batch_size, table.world_size), table.speedup)) == pytest.approx(
        {(16, 1): 1.0, (16, 2): 1.6, (32, 1): 1.0, (32, 2): 2.0})   # 4 / 2.5, 8 / 4


def preflight_record(run_id, hosts, micro, status="ok"):
    return run(run_id=run_id, workload="preflight", status=status, world_size=len(hosts),
               per_rank_json=json.dumps({"hosts": hosts}), micro_json=json.dumps(micro))


def test_preflight_reads_gemm_and_all_reduce_runs_apart_and_counts_each_nodes_runs():
    gemm = lambda t: {"gemm": [{"dtype": "bf16", "n": 4096, "tflops": t}]}   # noqa: E731
    all_reduce = lambda v: {"collectives": [{"op": "all_reduce", "scope": "intra_node", "busbw_gbps": v}]}  # noqa: E731
    frame = pd.DataFrame([
        # GEMM on one GPU per node; its one-rank all_reduce is a copy within the GPU, no bandwidth
        preflight_record("g1", ["n1"], {**gemm(10.0), **all_reduce(500.0)}),
        preflight_record("g2", ["n2", "n2"], gemm(10.0)),   # on both of n2's GPUs, no collectives
        preflight_record("g3", ["n3"], gemm(9.0)),
        # all_reduce among each node's two ranks, twice on n1 (2 and 4: median 3)
        preflight_record("a1", ["n1", "n1"], all_reduce(2.0)),
        preflight_record("a1b", ["n1", "n1"], all_reduce(4.0)),
        preflight_record("a2", ["n2", "n2"], all_reduce(3.0)),
        preflight_record("a3", ["n3", "n3"], all_reduce(2.7)),
        # a failed run measures nothing, and the sweep's training runs are not read
        preflight_record("x", ["n4"], gemm(1.0), status="error"),
        run(run_id="t", workload="train", tokens_per_s_per_device=100.0)])
    nodes, together = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)
    nodes = nodes.set_index("host")
    assert nodes.runs.to_dict() == {"n1": 3, "n2": 2, "n3": 2}
    assert nodes.gemm_tflops.to_dict() == {"n1": 10.0, "n2": 10.0, "n3": 9.0}
    assert nodes.busbw_gbps.to_dict() == {"n1": 3.0, "n2": 3.0, "n3": 2.7}
    # n3 at 9 / 10 and 2.7 / 3 is 90% of the others: on the 10% tolerance, not below it. The
    # bus bandwidth's noise: n1's 2 and 4 (CV 47%) is the only node with repeats: 3 x 47% = 141%
    assert nodes.gemm_vs_others["n3"] == pytest.approx(0.9)
    assert nodes.flagged.to_dict() == {"n1": False, "n2": False, "n3": False}
    # no run spanned nodes
    assert together.empty and list(together.columns) == ["run_id", "nodes", "world_size", "busbw_intra_node_gbps",
                                                         "busbw_inter_node_gbps"]


def test_a_node_on_exactly_the_tolerance_is_not_flagged():
    frame = pd.DataFrame([micro_run(h, [h, h], gemm=[g], intra=[b])
                          for h, g, b in (("n1", 10.0, 2.0), ("n2", 10.0, 2.0), ("n3", 9.0, 1.8))])
    nodes = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)[0].set_index("host")
    # 9 / 10 and 1.8 / 2: 90% of the others each, the tolerance's edge
    assert nodes.busbw_vs_others["n3"] == pytest.approx(0.9)
    assert not nodes.flagged.any()


def test_straggler_rows_carry_the_runs_figures_and_a_node_flagged_once_is_not_slow():
    frame = pd.DataFrame([
        straggler_run("r1", [0.010, 0.020], ["a", "b"], cv=0.01, model="small", strategy="zero2"),
        straggler_run("r2", [0.010, 0.011], ["a", "b"], cv=0.01),
        # no step-time CV recorded: the forward passes' own 20% noise decides (threshold 60%)
        straggler_run("r3", [0.010, 0.015], ["a", "c"], cv=None, forward_cv=[0.2, 0.2]),
        # an excess of exactly the 25% floor is not beyond it
        straggler_run("r4", [0.5, 0.625], ["a", "b"], cv=0.01),
        # the other ranks recorded no forward time: no excess to judge
        straggler_run("r5", [0.0, 0.0, 0.010], ["a", "a", "b"], cv=0.01),
        micro_run("p", ["a", "a"], gemm=[10.0])])   # the sweep's other runs are not read
    runs, nodes = stragglers(frame, min_excess=0.25, noise_sigmas=3.0)
    runs = runs.set_index("run_id")
    assert list(runs.columns) == ["model", "strategy", "world_size", "slowest_rank", "slowest_host", "slowest_s",
                                  "others_median_s", "excess", "threshold", "flagged"]
    assert runs.loc["r1", ["model", "strategy", "world_size", "slowest_s", "others_median_s"]].tolist() == [
        "small", "zero2", 2, 0.020, 0.010]
    assert runs.loc["r3", "threshold"] == pytest.approx(0.6)
    assert runs.loc["r4", "excess"] == 0.25 and runs.loc["r4", "threshold"] == 0.25
    assert pd.isna(runs.loc["r5", "excess"])
    assert runs.flagged.to_dict() == {"r1": True, "r2": False, "r3": False, "r4": False, "r5": False}
    # b held the flagged rank once: one slow run is no slow node
    assert nodes.set_index("host").flagged_runs.to_dict() == {"a": 0, "b": 1, "c": 0}
    assert not nodes.slow.any()
    # no training run with per-rank times: no rows, the columns stay
    empty, _ = stragglers(frame[frame.run_id == "p"], min_excess=0.25, noise_sigmas=3.0)
    assert empty.empty and list(empty.columns) == ["run_id"] + list(runs.columns)


# ---- repeats, labels and keys ------------------------------------------------------------------

def test_two_repeats_have_a_spread_and_a_cv_on_the_limit_is_not_noisy():
    frame = pd.DataFrame([run(repeat_index=i, tokens_per_s_per_device=v) for i, v in enumerate([90.0, 100.0, 110.0])]
                         + [run(strategy="zero1", repeat_index=i, tokens_per_s_per_device=v)
                            for i, v in enumerate([90.0, 110.0])])
    configs = aggregate_repeats(frame, max_cv=0.1).set_index("strategy")
    # ddp: std 10 / mean 100 = 10%, the limit itself; zero1: std 14.14 / mean 100 = 14.1%
    assert configs.repeat_cv.to_dict() == pytest.approx({"ddp": 0.1, "zero1": 2 ** 0.5 / 10})
    assert configs.noisy.to_dict() == {"ddp": False, "zero1": True}
    # every run failed: no configuration, the columns stay
    none = aggregate_repeats(frame.assign(status="error"), max_cv=0.1)
    assert none.empty and {"config_key", "repeats", "repeat_cv", "noisy"} <= set(none.columns)


def test_labels_write_flags_as_yes_or_no_and_a_missing_value_as_a_dash():
    from suite.report.analysis import configuration_labels

    configs = pd.DataFrame({"strategy": ["ddp"] * 4, "compile": [True, False, None, None],
                            "activation_checkpointing": pd.array(["none", "none", "none", pd.NA], dtype="string")})
    assert configuration_labels(configs)[1].tolist() == [
        "recompute none / compiled yes", "recompute none / compiled no", "recompute none / compiled —",
        "recompute — / compiled —"]
    # no strategy column and nothing varies: empty labels, on the rows' own index
    axes, labels = configuration_labels(pd.DataFrame({"model": ["tiny", "tiny"]}, index=[5, 7]))
    assert (axes, labels.to_dict()) == ([], {5: "", 7: ""})


def test_a_configurations_key_is_16_hex_digits_whatever_the_order_of_its_fields():
    a = json.dumps({"model": {"name": "tiny"}, "train": {"micro_batch_size": 2, "lr": 0.001}})
    b = json.dumps({"train": {"lr": 0.001, "micro_batch_size": 2}, "model": {"name": "tiny"}})
    assert configuration_key(a) == configuration_key(b)
    assert len(configuration_key(a)) == 16 and int(configuration_key(a), 16) >= 0
    # a record without a config is one configuration, the empty one
    assert configuration_key(None) == configuration_key("") == configuration_key("{}")


def test_rate_intervals_turn_steps_per_second_into_tokens_per_device():
    from suite.report.analysis import rate_intervals

    configs = pd.DataFrame({"config_key": ["a", "b"], "global_batch_size": [8, 8], "seq_len": [16, 16],
                            "world_size": [2, 2]}, index=[3, 4])
    # a: every step 0.5 s -> 2 steps/s exactly; x 8 x 16 / 2 = 64 tokens per step and device = 128
    got = rate_intervals(configs, {"a": [[0.5, 0.5], [0.5, 0.5]]})
    assert got.tokens_per_s_per_device_low.to_dict() == pytest.approx({3: 128.0, 4: float("nan")}, nan_ok=True)
    assert got.tokens_per_s_per_device_high.to_dict() == pytest.approx({3: 128.0, 4: float("nan")}, nan_ok=True)
    # b has no step times: null, as a float column
    none = rate_intervals(configs, {})
    assert none.tokens_per_s_per_device_low.dtype == "float64" and none.tokens_per_s_per_device_high.dtype == "float64"


def test_a_margin_whose_interval_stays_above_zero_is_clear():
    configs = aggregate_repeats(pd.DataFrame([run(strategy="ddp", tokens_per_s_per_device=120.0),
                                              run(strategy="zero1", tokens_per_s_per_device=100.0)]), max_cv=0.05)
    keys = configs.set_index("strategy").config_key
    # ddp's steps 0.5 s against zero1's 0.6 s in every run: 20% faster, with no spread at all
    runs = {keys["ddp"]: [[0.5, 0.5], [0.5, 0.5]], keys["zero1"]: [[0.6, 0.6], [0.6, 0.6]]}
    best = best_configurations(configs, runs).iloc[0]
    assert best.margin_low == pytest.approx(0.2) and best.verdict == "clear"

    # two configurations that ran exactly alike: the margin and its whole interval are 0, a tie
    even = aggregate_repeats(pd.DataFrame([run(strategy="ddp", tokens_per_s_per_device=100.0),
                                           run(strategy="zero1", tokens_per_s_per_device=100.0)]), max_cv=0.05)
    keys = even.set_index("strategy").config_key
    same = {keys["ddp"]: [[0.5, 0.5], [0.5, 0.5]], keys["zero1"]: [[0.5, 0.5], [0.5, 0.5]]}
    tie = best_configurations(even, same).iloc[0]
    assert (tie.margin, tie.margin_low, tie.margin_high) == (0.0, 0.0, 0.0) and tie.verdict.startswith("tie")


def test_preflight_with_one_run_per_node_takes_the_noise_from_its_interleaved_rounds():
    # each node's best GEMM point was timed in 5 rounds; n1's [1.0, 1.1, 0.9, 1.0, 1.0] s: CV
    # sqrt(0.02 / 4) / 1.0 = 7.07%, the error of its median 1.2533 x 7.07% / sqrt(5) = 3.96%;
    # n2's rounds agree exactly (0); n3's [2, 1, 1, 1, 1]: CV sqrt(0.8 / 4) / 1.2 = 37.3%, 20.9%.
    # The noise is the median over nodes, 3.96%: threshold max(10%, 3 x 3.96%) = 11.9%
    def node(host, tflops, rounds):
        rows = {"gemm": [{"dtype": "fp32", "n": 256, "tflops": tflops, "round_times_s": rounds},
                         {"dtype": "fp32", "n": 128, "tflops": tflops / 2, "round_times_s": [9.0, 1.0]}],
                "collectives": [{"op": "all_reduce", "scope": "intra_node", "busbw_gbps": 2.0,
                                 "round_times_s": [1.0, 1.0]}]}
        return run(run_id=host, workload="preflight", world_size=2,
                   per_rank_json=json.dumps({"hosts": [host, host]}), micro_json=json.dumps(rows))

    frame = pd.DataFrame([node("n1", 10.0, [1.0, 1.1, 0.9, 1.0, 1.0]), node("n2", 10.0, [1.0] * 5),
                          node("n3", 8.85, [2.0, 1.0, 1.0, 1.0, 1.0])])
    nodes = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)[0].set_index("host")
    assert nodes.threshold.iloc[0] == "GEMM 12%, busbw 10%"
    # n3 at 8.85 / 10 = 88.5%: inside the noise (the 10% tolerance alone would flag it)
    assert nodes.gemm_vs_others["n3"] == pytest.approx(0.885) and not nodes.flagged.any()
    frame = pd.DataFrame([node("n1", 10.0, [1.0, 1.1, 0.9, 1.0, 1.0]), node("n2", 10.0, [1.0] * 5),
                          node("n3", 8.7, [2.0, 1.0, 1.0, 1.0, 1.0])])
    nodes = node_preflight(frame, tolerance=0.10, noise_sigmas=3.0)[0].set_index("host")
    assert nodes.flagged.to_dict() == {"n1": False, "n2": False, "n3": True}  # 87% is beyond it


def test_a_rank_held_back_for_a_few_steps_is_no_straggler_but_one_slow_at_every_step_is():
    # forward seconds per timed step, by hand. Rank 1 of "burst" lost its core for 2 of 5
    # steps (3.0 ms -> 25, 9 ms): its fastest step 3.0 ms, as rank 0's: excess 0 (with three
    # bursts the medians would say 9.0 / 3.0, a 200% "straggler").
    # Rank 1 of "slow" takes twice as long at every step: fastest 6.0 against 3.0, excess 100%.
    # Noise: each rank's 1.4826 MAD / median; rank 0 [3.0, 3.1, 3.0, 3.2, 3.0]: median 3.0,
    # deviations [0, .1, 0, .2, 0] -> MAD 0 -> 0; the threshold is the 30% floor.
    per_step = {"burst": ([3.0, 3.1, 3.0, 3.2, 3.0], [3.0, 25.0, 3.1, 9.0, 3.0]),
                "slow": ([3.0, 3.1, 3.0, 3.2, 3.0], [6.0, 6.2, 6.1, 6.0, 6.3]),
                "three_bursts": ([3.0, 3.1, 3.0, 3.2, 3.0], [3.0, 25.0, 30.0, 9.0, 3.1])}
    frame = pd.DataFrame([run(run_id=name, workload="train", world_size=2, step_time_cv=0.5,
                              per_rank_json=json.dumps({"hosts": ["a", "a"],
                                                        "forward_time_s": [sorted(r0)[2], sorted(r1)[2]],
                                                        "forward_times_s": [r0, r1]}))
                          for name, (r0, r1) in per_step.items()])
    runs, _ = stragglers(frame, min_excess=0.30, noise_sigmas=3.0)
    runs = runs.set_index("run_id")
    assert runs.excess.to_dict() == pytest.approx({"burst": 0.0, "slow": 1.0, "three_bursts": 0.0})
    assert runs.flagged.to_dict() == {"burst": False, "slow": True, "three_bursts": False}
    # bursts in 3 of 5 steps are most of the run: rank 1's median 9.0, deviations [6, 16, 21, 0,
    # 5.9] -> MAD 6, 1.4826 x 6 / 9 = 0.988; median over the two ranks (0, 0.988) = 0.494: the
    # run is that noisy, so the threshold is 3 x 0.494 = 148%
    assert runs.threshold.to_dict() == pytest.approx({"burst": 0.30, "slow": 0.30, "three_bursts": 1.4826})
    # the step CV (50% here) no longer sets the threshold: bursts inflate it, not a straggler
    # a noisy rank at every step raises it: deviations 1.0 around 4.0 -> 1.4826 x 1 / 4 = 37%
    noisy = pd.DataFrame([run(run_id="n", workload="train", world_size=2, step_time_cv=0.0,
                              per_rank_json=json.dumps({"hosts": ["a", "a"], "forward_time_s": [4.0, 4.0],
                                                        "forward_times_s": [[3.0, 4.0, 5.0], [3.0, 4.0, 5.0]]}))])
    assert stragglers(noisy, 0.30, 3.0)[0].threshold.iloc[0] == pytest.approx(3 * 1.4826 / 4)


def test_records_without_per_step_forward_times_keep_the_median_rule():
    frame = pd.DataFrame([run(run_id="old", workload="train", world_size=2, step_time_cv=0.05,
                              per_rank_json=json.dumps({"hosts": ["a", "b"], "forward_time_s": [3.0, 4.5],
                                                        "forward_time_cv": [0.1, 0.2]}))])
    runs, _ = stragglers(frame, min_excess=0.30, noise_sigmas=3.0)
    # medians 3.0 and 4.5: excess 50%; noise max(5%, median CV 15%) -> threshold 45%
    assert runs.excess.iloc[0] == pytest.approx(0.5) and runs.threshold.iloc[0] == pytest.approx(0.45)
    assert bool(runs.flagged.iloc[0])


def test_overlap_comm_left_to_deepspeed_keeps_the_key_of_the_nights_that_wrote_its_value():
    from suite.report.analysis import configuration_key

    key = lambda stage, overlap: configuration_key(json.dumps(  # noqa: E731
        {"strategy": {"name": f"zero{stage}", "zero_stage": stage, "overlap_comm": overlap}}))
    # ZeRO-1/2 ran without overlap before and after null became the default: one configuration
    assert key(2, None) == key(2, False) and key(1, None) == key(1, False)
    # ZeRO-3 now overlaps (DeepSpeed's default): another configuration than the nights without
    assert key(3, None) == key(3, True) != key(3, False)
