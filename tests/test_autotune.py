"""The autotune search's rules (suite/autotune.py) with hand-worked numbers; the search run for
real against a full grid is in tests/test_report_e2e.py."""
from suite import autotune
from suite.autotune import Point


def ran(point, value, final=False, status="ok", wall=10.0):
    point.runs.append({"run_id": f"s/{point.label}", "final": final, "status": status,
                       "tokens_per_s_per_device": value if status == "ok" else None, "run_wall_s": wall})
    return point


def test_the_space_is_every_combination_in_order():
    points = autotune.space_points({"strategy": "ddp,zero3", "train.micro_batch_size": [1, 4]})
    assert [p.overrides for p in points] == [
        ["strategy=ddp", "train.micro_batch_size=1"], ["strategy=ddp", "train.micro_batch_size=4"],
        ["strategy=zero3", "train.micro_batch_size=1"], ["strategy=zero3", "train.micro_batch_size=4"]]
    assert points[1].label == "strategy=ddp micro_batch_size=4"


def test_boundary_checks_are_the_points_ruled_out_by_the_smallest_margin():
    a, b, c = (Point([f"x={i}"], required_bytes=r, available_bytes=10.0) for i, r in enumerate((30.0, 11.0, 12.0)))
    assert autotune.boundary_points([a, b, c], 2) == [b, c]  # 1.1x and 1.2x the memory, not 3x
    assert autotune.boundary_points([a, b, c], 0) == []


def test_halving_keeps_the_fastest_and_never_a_failed_run():
    fast, slow, broken, middle = (Point([f"x={i}"]) for i in range(4))
    ran(fast, 300.0), ran(slow, 100.0), ran(broken, None, status="oom"), ran(middle, 200.0)
    assert autotune.promote([fast, slow, broken, middle], 2) == [fast, middle]
    assert autotune.promote([broken], 1) == []


def test_a_rung_keeps_a_third_but_never_fewer_than_the_finalists():
    assert autotune.next_rung_size(7, 3, 2) == 3   # ceil(7/3)
    assert autotune.next_rung_size(9, 3, 2) == 3
    assert autotune.next_rung_size(4, 3, 2) == 2   # ceil(4/3) = 2
    assert autotune.next_rung_size(10, 2, 1) == 5
    assert autotune.next_rung_size(1, 3, 2) == 1   # never more than there are


def test_summary_names_the_best_finalist_its_margin_and_the_run_seconds():
    best, second, halved, invalid, memory = (Point([f"x={i}"]) for i in range(5))
    ran(ran(best, 90.0, wall=8.0), 110.0, final=True, wall=12.0)
    ran(ran(second, 95.0, wall=8.0), 100.0, final=True, wall=14.0)
    ran(halved, 50.0, wall=8.0)
    best.outcome = second.outcome = autotune.FINALIST
    halved.outcome, invalid.outcome, memory.outcome = autotune.HALVED, autotune.INVALID, autotune.MEMORY
    out = autotune.summary([best, second, halved, invalid, memory], {"rung_steps": [3]})
    assert out["best"] == "x=0" and out["runner_up"] == "x=1"
    assert abs(out["margin"] - 0.10) < 1e-12          # 110 / 100 - 1
    assert out["run_seconds"] == 8 + 12 + 8 + 14 + 8  # every run, short ones too
    assert out["runs"] == 5
    # 4 points a grid would start (not the invalid one) x the mean full run (12 + 14) / 2 = 13 s
    assert out["grid_points"] == 4 and out["grid_estimate_s"] == 52.0
