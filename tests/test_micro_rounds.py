"""The micro-benchmarks' rounds, by hand: each point timed round-robin, its figure the median."""
import pytest

from suite.workload.micro import interleaved_rounds, round_figures


def test_rounds_take_every_point_once_before_any_point_again():
    calls = []
    points = [lambda name=name: calls.append(name) or float(len(calls)) for name in "abc"]
    times = interleaved_rounds(points, rounds=3)
    # a load that lasts the first three calls falls on round 1 of every point, not all of a's rounds
    assert calls == list("abcabcabc")
    assert times == [[1.0, 4.0, 7.0], [2.0, 5.0, 8.0], [3.0, 6.0, 9.0]]


def test_a_points_figure_is_the_median_of_its_rounds_with_their_spread():
    figures = round_figures([1.0, 1.1, 0.9, 1.0, 5.0])  # one round under load
    assert figures["time_s"] == 1.0 and figures["round_times_s"] == [1.0, 1.1, 0.9, 1.0, 5.0]
    mean = 9.0 / 5
    std = (sum((t - mean) ** 2 for t in [1.0, 1.1, 0.9, 1.0, 5.0]) / 4) ** 0.5
    assert figures["round_cv"] == pytest.approx(std / mean)
    assert round_figures([2.0, 4.0])["time_s"] == 3.0  # an even count: the middle two's mean
    assert round_figures([2.0]) == {"time_s": 2.0, "round_times_s": [2.0], "round_cv": 0.0}
