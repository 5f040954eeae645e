"""Change points in the nightly history: Otava's E-Divisive and the suite's median/MAD rule on
synthetic series with fixed seeds (the error-rate study is bench/changepoint_error_rates.py)."""
import numpy as np
import pandas as pd
import pytest

from suite.report.changepoints import (changes_per_configuration, decide, median_mad_flags,
                                       median_mad_verdicts, otava_changes, otava_nights)
from suite.report.collate import load_sweep

NIGHTS, DROP_NIGHT = 30, 20


def nightly(noise: float, drop: float, seed: int) -> list:
    """30 nights of tokens/s per device around 1000 (noise: each night's relative standard
    deviation), `drop` lost for good from night 20."""
    values = 1000.0 * (1 + noise * np.random.default_rng(seed).standard_normal(NIGHTS))
    values[DROP_NIGHT:] *= 1 - drop
    return values.tolist()


def test_otava_finds_an_injected_drop_at_its_night_and_size():
    found = otava_changes(nightly(0.01, 0.10, seed=11))
    assert len(found) == 1
    change = found[0]
    assert abs(change.index - DROP_NIGHT) <= 1
    assert change.change == pytest.approx(-0.10, abs=0.03)
    assert change.after < change.before and change.pvalue < 0.01


def test_otava_is_quiet_on_noise_only_nights():
    assert otava_changes(nightly(0.01, 0.0, seed=12)) == []


def test_otava_takes_an_array_as_a_list():
    """otava 0.8 slices ndarrays wrongly in its split step (a window shorter than the series):
    the wrapper hands it a list, so an array gives the same answer."""
    values = nightly(0.01, 0.10, seed=11) * 2  # 60 nights: longer than the window
    assert otava_changes(np.array(values), window=20) == otava_changes(values, window=20)


def test_the_median_mad_rule_flags_the_drop_and_not_the_noise():
    flags = median_mad_flags(nightly(0.01, 0.10, seed=11))
    assert flags[0] is None  # nothing to compare the first night with
    assert flags[DROP_NIGHT] == "regression"
    assert set(flags[1:DROP_NIGHT]) == {"unchanged"}
    assert set(median_mad_flags(nightly(0.01, 0.0, seed=12))[1:]) == {"unchanged"}


def test_the_median_mad_wrapper_is_the_reports_rule_with_its_settings():
    # a 10% drop is within a 20% min_drop; the verdicts carry the rule's own figures:
    # baseline 100, MAD 1 -> noise 1.4826, allowed max(5% x 100, 3 x 1.4826) = 5
    assert "regression" not in median_mad_flags(nightly(0.01, 0.10, seed=11), min_drop=0.20)
    night = median_mad_verdicts([[100.0, 101.0, 99.0, 90.0]]).set_index("night").loc[3]
    assert (night.baseline, night.allowed_drop, night.verdict) == (100.0, 5.0, "regression")
    assert night.change == pytest.approx(-0.10)


def history_frame() -> pd.DataFrame:
    """Two configurations over 10 nights: zero1 drops 10% from night 6 (two repeats a night,
    the night's value is their median); zero2 stays within 1%."""
    dropping = [100, 101, 99, 100, 102, 98, 90, 91, 89, 90]
    flat = [50, 50.5, 49.5, 50, 50.25, 49.75, 50, 50.5, 49.5, 50]
    rows = []
    for night in range(10):
        date = f"2026-11-{night + 1:02d}"
        common = {"sweep_id": f"night{night:02d}", "sweep_date": date, "finished_at": f"{date}T03:00:00",
                  "status": "ok", "model": "gpt_tiny", "optimizer": "adamw", "precision": "fp32", "world_size": 2}
        for offset in (-1.0, 1.0):
            rows.append({**common, "config_key": "k_zero1", "strategy": "zero1",
                         "tokens_per_s_per_device": dropping[night] + offset})
        rows.append({**common, "config_key": "k_zero2", "strategy": "zero2", "tokens_per_s_per_device": flat[night]})
    rows.append({**rows[-1], "status": "error", "tokens_per_s_per_device": None})  # a failed run: no night
    return pd.DataFrame(rows)


@pytest.mark.parametrize("method", ["otava", "median_mad"])
def test_changes_per_configuration_names_the_night_and_the_size(method):
    table = changes_per_configuration(history_frame(), method=method).set_index("config_key")
    assert table.index.tolist() == ["k_zero1", "k_zero2"]
    assert table.loc["k_zero1", "strategy"] == "zero1" and (table.nights == 10).all()
    assert (table.first_sweep_date.tolist(), table.last_sweep_date.tolist()) == (
        ["2026-11-01"] * 2, ["2026-11-10"] * 2)
    dropped = table.loc["k_zero1"]
    assert (dropped.method, dropped.change_sweep_id, dropped.change_sweep_date) == (method, "night06", "2026-11-07")
    if method == "otava":  # the means either side: 100 before, 90 after
        assert dropped.change == pytest.approx(-0.10, abs=0.005)
        assert (dropped.before, dropped.after) == (pytest.approx(100.0), pytest.approx(90.0))
        assert dropped.pvalue < 0.01
    else:  # the first flagged night against the baseline (median of nights 0-5: 100); no p-value
        assert (dropped.change, dropped.before, dropped.after) == (pytest.approx(-0.10), 100.0, 90.0)
        assert pd.isna(dropped.pvalue)
    flat = table.loc["k_zero2"]
    assert flat[["change_sweep_id", "change_sweep_date", "change", "before", "after", "pvalue"]].isna().all()


def test_changes_per_configuration_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="method"):
        changes_per_configuration(history_frame(), method="t-test")


def test_the_method_decides_and_otava_needs_its_nights():
    from suite.report.changepoints import decide

    regress = pd.DataFrame({"config_key": ["a", "b", "c", "d"], "verdict": ["unchanged", "regression", "regression",
                                                                            "unchanged"]})
    changes = pd.DataFrame({"config_key": ["a", "b", "c", "d"], "nights": [10, 10, 3, 12],
                            "change": [-0.10, None, None, -0.2], "nights_since": [1, None, None, 9],
                            "change_sweep_date": ["2026-11-09", None, None, "2026-11-03"],
                            "pvalue": [1e-4, None, None, 1e-5]})
    otava = decide(regress, changes, "otava", min_nights=6, recent_nights=7).set_index("config_key")
    # a: Otava's drop a night ago decides, though the median/MAD rule saw nothing; b: no change
    # point; c: 3 nights, too few for Otava: the median/MAD rule; d: a drop 9 nights ago is old news
    assert otava.verdict.to_dict() == {"a": "regression", "b": "unchanged", "c": "regression", "d": "unchanged"}
    assert otava.method.to_dict() == {"a": "otava", "b": "otava", "c": "median/MAD (fewer than 6 nights)",
                                      "d": "otava"}
    assert otava.median_mad_verdict.tolist() == regress.verdict.tolist()   # shown beside it
    assert otava.loc["a", "otava"] == "-10.0% from 2026-11-09 (1 nights ago, p 0.0001)"
    mad = decide(regress, changes, "median_mad", min_nights=6, recent_nights=7)
    assert mad.verdict.tolist() == regress.verdict.tolist() and set(mad.method) == {"median/MAD"}


def test_the_report_decides_by_otava_once_a_configuration_has_its_nights(tmp_path):
    """Eight nights of one configuration in the history store, the last 30% slower: Otava finds
    the change point on that night and the report calls it a regression, beside the median/MAD
    rule's verdict, and lists it among the change points."""
    from suite import results
    from suite.config import ReportConfig
    from suite.report.build import report_sweep

    history = tmp_path / "history"
    rng = np.random.default_rng(0)
    for night in range(8):
        sweep = tmp_path / f"night{night}"
        tokens = 1000.0 * (1 + 0.01 * rng.standard_normal()) * (0.7 if night == 7 else 1.0)
        day = f"2026-11-{night + 1:02d}T01:00:00+00:00"
        results.write_record(sweep / "0_ddp", results.make_record(
            run_id=f"{sweep.name}/0_ddp", sweep_id=sweep.name, status="ok", error=None,
            config={"model": {"name": "tiny"}, "strategy": "ddp"}, env={"torch": "2.13.0"},
            metrics={"tokens_per_s_per_device": tokens, "tokens_per_s": 2 * tokens},
            axes={"model": "tiny", "strategy": "ddp", "optimizer": "adamw", "precision": "fp32", "world_size": 2},
            started_at=day, finished_at=day))
        report = report_sweep(sweep, ReportConfig(history_dir=str(history), fail_on_regression=True))
    assert not report.all_ok  # the nightly job fails on the regression
    md = report.markdown_path.read_text()
    section = md.split("## Regressions against history")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| tiny"))
    assert "| regression " in row and "| otava " in row and "from 2026-11-08 (0 nights ago" in row
    points = md.split("## Change points (Apache Otava)")[1].split("\n## ")[0]
    assert "| 2026-11-08 " in points and "night7" in points


def test_the_error_rate_benchmark_runs_in_small_mode():
    """bench/changepoint_error_rates.py --small (10 series a cell): the script cannot rot; its
    figures mean nothing at that size (bench/RESULTS.md has the real run)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "bench/changepoint_error_rates.py", "--small"], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| median/MAD ") or line.startswith("| Otava ")]
    assert len(rows) == 2 * 12  # both methods, 3 noise-only cells and 9 drop cells


def long_history(series: dict) -> pd.DataFrame:
    """One run a night of each configuration (key: its nightly values, oldest first), the
    nights consecutive from 1 January 2026, as `history.load` gives them."""
    rows = []
    for key, values in series.items():
        for night, value in enumerate(values):
            date = f"{pd.Timestamp('2026-01-01') + pd.Timedelta(days=night):%Y-%m-%d}"
            rows.append({"sweep_id": f"night{night:03d}", "sweep_date": date, "finished_at": f"{date}T03:00:00",
                         "status": "ok", "config_key": key, "model": "gpt_tiny", "strategy": key,
                         "optimizer": "adamw", "precision": "fp32", "world_size": 2,
                         "tokens_per_s_per_device": value})
    return pd.DataFrame(rows)


def steps(seed: int, *changes, nights: int = 200, noise: float = 0.01) -> list:
    """`nights` nights around 1000 at `noise`; each (nights_ago, factor) multiplies the nights
    from that one (0 = tonight) on."""
    values = 1000.0 * (1 + noise * np.random.default_rng(seed).standard_normal(nights))
    for ago, factor in changes:
        values[nights - 1 - ago:] *= factor
    return values.tolist()


# (series, the verdict): changes inside the window of 7 nights (0-6 nights ago) and outside it
# (7 nights ago, inside the nights Otava is given; 100 nights ago, before them)
SERIES = {"quiet": (steps(21), "unchanged"),
          "drop_tonight": (steps(22, (0, 0.8)), "regression"),
          "drop_3": (steps(23, (3, 0.9)), "regression"),
          "drop_6": (steps(24, (6, 0.9)), "regression"),
          "drop_7": (steps(25, (7, 0.9)), "unchanged"),
          "drop_20": (steps(26, (20, 0.9)), "unchanged"),
          "drop_100": (steps(27, (100, 0.9)), "unchanged"),
          "rise_2": (steps(28, (2, 1.1)), "improvement"),
          "old_drop_new_rise": (steps(29, (100, 0.9), (2, 1.1)), "improvement"),
          "two_drops": (steps(30, (50, 0.9), (4, 0.9)), "regression"),
          "short": (steps(31, (2, 0.9), nights=12), "regression")}


def test_otava_on_the_nights_the_verdict_reads_decides_as_over_the_whole_series():
    """The report runs Otava on each configuration's last otava_window + window nights
    (otava_nights): on 200-night series with a change inside the window of 7 nights, just
    outside it and long before, the verdicts (and the latest change's night and sign inside
    the window) are the same as over all 200 nights."""
    frame = long_history({key: values for key, (values, _) in SERIES.items()})
    regress = pd.DataFrame({"config_key": list(SERIES), "verdict": "unchanged"})
    tail = otava_nights(7)
    assert tail == 37
    whole = changes_per_configuration(frame, "otava").set_index("config_key")
    last = changes_per_configuration(frame, "otava", last_nights=tail).set_index("config_key")
    assert last.nights.to_dict() == {key: min(len(values), tail) for key, (values, _) in SERIES.items()}
    verdicts = [decide(regress, table.reset_index(), "otava", min_nights=6, recent_nights=7)
                .set_index("config_key").verdict.to_dict() for table in (whole, last)]
    assert verdicts[0] == verdicts[1] == {key: verdict for key, (_, verdict) in SERIES.items()}
    recent = whole.nights_since < 7
    assert (whole.change_sweep_id[recent] == last.change_sweep_id[recent]).all()
    assert (np.sign(whole.change[recent]) == np.sign(last.change[recent])).all()


def test_only_the_given_configurations_are_analysed():
    frame = long_history({key: SERIES[key][0] for key in ("quiet", "drop_3", "rise_2")})
    table = changes_per_configuration(frame, "otava", last_nights=37, config_keys=["rise_2", "drop_3", "new"])
    assert table.config_key.tolist() == ["drop_3", "rise_2"]  # in the history's order; "new" has no nights
    assert (table.nights == 37).all() and table.first_sweep_date.tolist() == ["2026-06-13"] * 2
    assert changes_per_configuration(frame, "otava", config_keys=[]).empty


def test_the_report_over_a_long_history_reads_only_the_nights_it_needs(tmp_path):
    """A history of 70 nights, its oldest night's file unreadable: the report never opens it
    (the verdicts and the trend plot read the last 37 nights) and decides by Otava: a drop two
    nights before tonight is a regression, one 60 nights ago is old news."""
    from suite import results
    from suite.config import ReportConfig
    from suite.report import history
    from suite.report.build import report_sweep

    store = tmp_path / "history"
    nights = 70
    series = {"ddp": steps(41, (2, 0.85), nights=nights + 1), "zero1": steps(42, (60, 0.85), nights=nights + 1)}
    tonight = pd.Timestamp("2026-12-08")
    for night in range(nights + 1):
        day = tonight - pd.Timedelta(days=nights - night)
        sweep = tmp_path / f"{day:%Y-%m-%d}_01-00-00"
        for strategy, values in series.items():
            results.write_record(sweep / f"0_{strategy}", results.make_record(
                run_id=f"{sweep.name}/0_{strategy}", sweep_id=sweep.name, status="ok", error=None,
                config={"model": {"name": "tiny"}, "strategy": strategy}, env={"torch": "2.13.0"},
                metrics={"tokens_per_s_per_device": values[night], "tokens_per_s": 2 * values[night]},
                axes={"model": "tiny", "strategy": strategy, "optimizer": "adamw", "precision": "fp32",
                      "world_size": 2},
                started_at=f"{day:%Y-%m-%d}T01:00:00+00:00", finished_at=f"{day:%Y-%m-%d}T02:00:00+00:00"))
        if night < nights:  # the earlier nights enter the store as their reports would add them
            history.append(store, load_sweep(sweep))
    oldest = sorted(store.glob("sweep_date=*/*.parquet"))[0]
    oldest.write_bytes(b"not parquet")  # opened, it would fail the report
    report = report_sweep(sweep, ReportConfig(history_dir=str(store)))
    verdicts = report.regressions.set_index("strategy")
    assert verdicts.verdict.to_dict() == {"ddp": "regression", "zero1": "unchanged"}
    assert verdicts.method.tolist() == ["otava", "otava"] and (verdicts.nights == 7).all()
    assert "from 2026-12-06 (2 nights ago" in verdicts.otava["ddp"]
    assert verdicts.otava["zero1"] == "no change point"  # 60 nights ago: before the nights Otava is given


def test_a_series_that_never_moves_more_than_the_minimum_size_skips_otava(monkeypatch):
    import otava.analysis

    from suite.report.changepoints import otava_changes

    def never(*args, **kwargs):
        raise AssertionError("Otava was run on a series whose spread is below min_magnitude")

    steady = [100.0, 103.0, 101.0, 99.5, 102.0] * 8  # 103 / 99.5 - 1 = 3.5% <= 4%: no point can pass
    monkeypatch.setattr(otava.analysis, "compute_change_points", never)
    assert otava_changes(steady, window=30, max_pvalue=0.0005, min_magnitude=0.04) == []
    monkeypatch.undo()
    # the screen changes no answer: Otava itself keeps no point there either, and a real 10% drop
    # (spread above the minimum) still goes to Otava and is found
    points, _ = otava.analysis.compute_change_points(steady, window_len=30, max_pvalue=0.0005, min_magnitude=0.04)
    assert points == []
    drop = [100.0] * 20 + [90.0] * 20
    [change] = otava_changes(drop, window=30, max_pvalue=0.0005, min_magnitude=0.04)
    assert change.index == 20 and change.change == pytest.approx(-0.1)
