"""Report maths on hand-built frames with hand-computed answers."""
import json

import pandas as pd
import pytest

from suite.report.analysis import (aggregate_repeats, best_configurations, configuration_key,
                                   environment_diff, model_vs_measured, node_preflight, regressions,
                                   scaling_table, stragglers, trends)


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
    assert list(table.peak_ratio[:2]) == [1.05, 1.2] and pd.isna(table.peak_ratio[2])
    # 1.05 is inside the 10% allocator allowance; 1.2 means the model under-predicts
    assert table.flag[0] == "" and table.flag[1] == "peak 1.20x the memory model: it under-predicts"
    assert table.flag[2] == ""  # the CPU's resident set includes the runtime: not compared
