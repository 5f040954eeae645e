"""Intervals from recorded step times (suite/report/intervals.py) and how the report uses them:
the throughput rows, the best configuration's margin (a tie inside the noise) and scaling
efficiencies. Hand-worked numbers; the default sweep's real records in tests/test_sweep_e2e.py."""
import json

import pandas as pd
import pytest

from suite.report import analysis, intervals


def test_constant_steps_give_a_point_and_one_run_resamples_only_its_steps():
    assert intervals.rate_interval([[0.25] * 6]) == pytest.approx((4.0, 4.0))  # 1 / 0.25 s
    # steps 0.1 and 0.3 s: a draw of 2 steps has mean 0.1 (1/4), 0.2 (1/2) or 0.3 (1/4), so the
    # rate is 10, 5 or 3.33 steps/s; the 95% interval runs from the slowest to the fastest draw
    low, high = intervals.rate_interval([[0.1, 0.3]])
    assert low == pytest.approx(10 / 3) and high == pytest.approx(10.0)


def test_the_change_between_two_configurations_and_its_interval():
    # run-to-run noise: BASE at 10 and 3.33 steps/s, NEW at 5 (as in tests/test_compare.py)
    change, low, high = intervals.change_interval([[0.1, 0.1], [0.3, 0.3]], [[0.2, 0.2], [0.2, 0.2]])
    assert (change, low, high) == pytest.approx((-0.25, -0.5, 0.5))
    assert not intervals.excludes_zero(low, high) and intervals.excludes_zero(0.01, 0.2)
    # an efficiency of 80% whose runs' rate changed by -20% [-30%, -10%]: 70% to 90%
    assert intervals.scaled(0.8, -0.2, -0.3, -0.1) == pytest.approx((0.7, 0.9))


def _config(key, strategy, tokens, steps):
    return {"config_key": key, "model": "tiny", "strategy": strategy, "optimizer": "adamw", "precision": "fp32",
            "world_size": 2.0, "nodes": 1.0, "global_batch_size": 4.0, "seq_len": 64.0,
            "tokens_per_s_per_device": tokens, "memory_capacity_bytes": None, "peak_memory_bytes": None,
            "status": "ok", "step_times_json": json.dumps(steps)}


def test_two_identical_configurations_are_a_tie_and_a_clear_gap_is_a_winner():
    # one real record's step times (the default sweep's ddp / sgd_momentum run) for two
    # configurations that differ only in an axis that costs nothing: the margin is noise
    steps = [0.0529, 0.0605, 0.0437, 0.0456, 0.051, 0.0624, 0.0406, 0.0578, 0.0514, 0.0499]
    slow = [0.1732, 0.0998, 0.1051, 0.1182, 0.1231, 0.1404, 0.11, 0.131, 0.1214, 0.1225]  # its zero3 run
    per_step = 4 * 64 / 2  # tokens per step and device
    rows = [_config("a", "ddp", per_step / (sum(steps) / 10), steps),
            _config("b", "zero1", per_step / (sum(steps) / 10) * 0.999, steps),
            _config("c", "zero3", per_step / (sum(slow) / 10), slow)]
    frame = pd.DataFrame(rows)
    runs = intervals.runs_by_configuration(frame)
    [best] = analysis.best_configurations(frame, runs).to_dict("records")
    assert best["configuration"] == "ddp" and best["runner_up"] == "zero1"
    assert best["margin_low"] < 0 < best["margin_high"] and best["verdict"] == analysis.TIE
    [clear] = analysis.best_configurations(frame[frame.strategy != "zero1"], runs).to_dict("records")
    assert clear["runner_up"] == "zero3" and clear["margin"] == pytest.approx(sum(slow) / sum(steps) - 1)
    assert clear["margin_low"] > 1.0 and clear["verdict"] == analysis.CLEAR   # ddp 2.3x zero3's rate
    # the throughput rows: tokens/s per device within its interval
    shown = analysis.rate_intervals(frame, runs).set_index("config_key")
    for key in "ac":
        row = shown.loc[key]
        assert row.tokens_per_s_per_device_low < row.tokens_per_s_per_device < row.tokens_per_s_per_device_high
    assert pd.isna(analysis.rate_intervals(frame, {}).tokens_per_s_per_device_low).all()  # no step times


def test_scaling_efficiencies_carry_the_interval_of_their_rate_against_n0():
    def config(key, world, steps):
        return {**_config(key, "ddp", 64 * 4 / (sum(steps) / len(steps)), steps), "scaling": "weak",
                "world_size": float(world), "global_batch_size": 2.0 * world, "micro_batch_size": 2.0,
                "tokens_per_s": 64 * 2 * world / (sum(steps) / len(steps)), "step_time_median_s": steps[0],
                "noisy": False, "grad_accum_steps": 1.0, "data_parallel": float(world)}
    configs = pd.DataFrame([config("n1", 1, [0.1] * 4), config("n2", 2, [0.125] * 4)])
    table = analysis.scaling_table(configs, intervals.runs_by_configuration(configs)).set_index("world_size")
    assert table.loc[2, "efficiency"] == pytest.approx(0.8)  # (2/0.125/2) / (1/0.1/1)
    assert (table.loc[2, "efficiency_low"], table.loc[2, "efficiency_high"]) == pytest.approx((0.8, 0.8))
    assert pd.isna(table.loc[1, "efficiency_low"])  # N0 is 100% by definition
    # and the report's Scaling table shows it
    from suite.report import sections

    [(_, shown)] = sections.scaling_section(table.reset_index()).tables
    assert shown["95% interval"].tolist() == ["—", "[80.0%, 80.0%]"]
