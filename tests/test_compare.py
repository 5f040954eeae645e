"""The A/B comparison's maths (suite/report/compare.py) with hand-worked numbers; two real sweeps,
one slowed, are compared in tests/test_report_e2e.py."""
import json

import pandas as pd
import pytest

from suite.report import compare as ab


def test_constant_step_times_give_a_point_interval_and_a_verdict():
    # 0.1 s -> 0.2 s per step on both runs of each side: half the rate, nothing to resample
    change, low, high = ab.bootstrap_change([[0.1] * 5, [0.1] * 4], [[0.2] * 5, [0.2] * 3])
    assert change == pytest.approx(-0.5) and low == pytest.approx(-0.5) and high == pytest.approx(-0.5)
    assert ab.verdict(change, low, high, min_change=0.02) == ab.SLOWER


def test_run_to_run_noise_widens_the_interval():
    # BASE: runs at 10 and 3.33 steps/s (mean 6.67); NEW: two runs at 5. Steps are constant, so a
    # draw differs only by which BASE runs it picks: both fast (1/4): 5/10 - 1 = -50%; one of each
    # (1/2): 5/6.67 - 1 = -25%; both slow (1/4): 5/3.33 - 1 = +50%. The 95% interval spans both ends.
    change, low, high = ab.bootstrap_change([[0.1, 0.1], [0.3, 0.3]], [[0.2, 0.2], [0.2, 0.2]])
    assert change == pytest.approx(5 / (20 / 3) - 1)
    assert low == pytest.approx(-0.5) and high == pytest.approx(0.5)
    assert ab.verdict(change, low, high, min_change=0.02) == ab.UNCHANGED


def test_a_verdict_needs_the_interval_off_zero_and_a_change_of_min_change():
    assert ab.verdict(0.03, 0.01, 0.05, min_change=0.02) == ab.FASTER
    assert ab.verdict(0.01, 0.005, 0.02, min_change=0.02) == ab.UNCHANGED   # real but too small
    assert ab.verdict(-0.10, -0.2, 0.01, min_change=0.02) == ab.UNCHANGED   # interval crosses zero
    assert ab.verdict(-0.10, -0.2, -0.01, min_change=0.02) == ab.SLOWER


def test_the_same_seed_gives_the_same_interval():
    base, new = [[0.10, 0.12, 0.11, 0.13], [0.1, 0.1, 0.14, 0.12]], [[0.2, 0.21, 0.19, 0.25], [0.22, 0.2, 0.2, 0.2]]
    assert ab.bootstrap_change(base, new, seed=3) == ab.bootstrap_change(base, new, seed=3)


def _runs(key, steps_per_run, model="tiny", strategy="ddp", tokens=1000.0):
    return [{"run_id": f"s/{key}{i}", "status": "ok", "workload": "train", "config_key": key, "model": model,
             "strategy": strategy, "optimizer": "adamw", "precision": "fp32", "world_size": 2.0,
             "tokens_per_s_per_device": tokens, "step_times_json": json.dumps(steps) if steps else None,
             "env_torch": "2.13", "env_variables": json.dumps({"MASTER_PORT": str(2000 + i)})}
            for i, steps in enumerate(steps_per_run)]


def test_configurations_are_matched_by_key_and_each_gets_its_verdict():
    base = pd.DataFrame(_runs("a", [[0.1] * 4, [0.1] * 4]) + _runs("b", [[0.1] * 4], strategy="zero3")
                        + _runs("gone", [[0.1] * 4], strategy="zero1") + _runs("old", [None, None], strategy="zero2"))
    new = pd.DataFrame(_runs("a", [[0.2] * 4, [0.2] * 4], tokens=500.0) + _runs("b", [[0.1] * 4], strategy="zero3")
                       + _runs("old", [None, None], strategy="zero2", tokens=1100.0))
    table, only_base, only_new = ab.compare(base, new)
    rows = table.set_index("config_key")
    assert rows.loc["a", "verdict"] == ab.SLOWER and rows.loc["a", "change"] == pytest.approx(-0.5)
    assert rows.loc["b", "verdict"] == ab.FEW_RUNS                 # one run a side: no verdict
    assert rows.loc["old", "verdict"] == ab.UNKNOWN                # no step times: no interval
    assert rows.loc["old", "change"] == pytest.approx(0.1) and pd.isna(rows.loc["old", "low"])
    assert only_base == ["gone"] and only_new == []
    assert rows.loc["a", "label"] == "ddp"               # only the axis that varies names it
    assert rows.loc["a", "what_differs"] == ""                    # the rendezvous port is per job
    assert ab.summary_line(table).startswith("3 configurations compared: 0 faster, 1 slower")
