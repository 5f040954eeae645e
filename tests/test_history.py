"""The history store: each sweep enters it once, under the one night it belongs to, whatever the
dates of its runs and however often its report is rebuilt. The clock is the records' own start
times, set by hand here: a nightly sweep that starts at 23:59:54 and ends after midnight."""
import pandas as pd

from suite import results
from suite.report import history
from suite.report.collate import load_sweep, sweep_night


def write(sweep, name, started_at, tokens=1000.0):
    rec = results.make_record(
        run_id=f"{sweep.name}/{name}", sweep_id=sweep.name, status="ok", error=None,
        config={"model": {"name": "tiny"}, "strategy": name}, metrics={"tokens_per_s_per_device": tokens},
        env={"torch": "2.13.0"}, axes={"model": "tiny", "strategy": name, "world_size": 2},
        started_at=started_at, finished_at=started_at)
    results.write_record(sweep / name, rec)


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.glob("sweep_date=*/*.parquet"))


def test_a_sweep_across_midnight_is_one_file_under_the_night_it_started(tmp_path):
    night = tmp_path / "2026-12-07_23-59-50"
    write(night, "0_ddp", "2026-12-07T23:59:54+00:00")
    write(night, "1_zero1", "2026-12-08T00:00:07+00:00")
    write(night, "2_zero2", "2026-12-08T00:00:21+00:00")
    frame = load_sweep(night)
    assert list(frame.sweep_date) == ["2026-12-07"] * 3  # the report's trend: one point, that night
    store = tmp_path / "history"
    assert history.append(store, frame) == 3
    assert files(store) == ["sweep_date=2026-12-07/2026-12-07_23-59-50-0.parquet"]
    loaded = history.load(store)
    assert len(loaded) == 3 and set(loaded.sweep_date) == {"2026-12-07"}


def test_a_rebuild_after_the_runs_moved_to_another_day_replaces_the_sweep_and_keeps_its_night(tmp_path):
    sweep = tmp_path / "2026-12-07_23-59-50"
    write(sweep, "0_ddp", "2026-12-07T23:59:54+00:00")
    write(sweep, "1_zero1", "2026-12-08T00:00:07+00:00")
    store = tmp_path / "history"
    history.append(store, load_sweep(sweep))
    # a resume the next day reran both runs: every start now lies on 2026-12-09
    write(sweep, "0_ddp", "2026-12-09T08:00:00+00:00", tokens=1100.0)
    write(sweep, "1_zero1", "2026-12-09T08:00:30+00:00", tokens=1200.0)
    history.append(store, load_sweep(sweep))
    history.append(store, load_sweep(sweep))  # and the report rebuilt once more
    assert files(store) == ["sweep_date=2026-12-07/2026-12-07_23-59-50-0.parquet"]
    loaded = history.load(store).sort_values("strategy")
    assert list(loaded.tokens_per_s_per_device) == [1100.0, 1200.0]  # the new rows, once each


def test_an_earlier_copy_in_another_night_is_removed_whatever_wrote_it(tmp_path):
    # a store written by the older rule: the sweep's rows split by each run's own date
    sweep = tmp_path / "s1"
    write(sweep, "0_ddp", "2026-12-07T23:59:54+00:00")
    write(sweep, "1_zero1", "2026-12-08T00:00:07+00:00")
    store = tmp_path / "history"
    frame = load_sweep(sweep)
    for date, rows in frame.assign(sweep_date=frame.started_at.str[:10]).groupby("sweep_date"):
        (store / f"sweep_date={date}").mkdir(parents=True)
        rows.drop(columns="sweep_date").to_parquet(store / f"sweep_date={date}" / "s1-0.parquet")
    history.append(store, frame)
    assert files(store) == ["sweep_date=2026-12-07/s1-0.parquet"]
    assert len(history.load(store)) == 2


def test_two_sweeps_in_one_frame_each_enter_under_their_own_night(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "0_ddp", "2026-12-07T23:00:00+00:00")
    write(b, "0_ddp", "2026-12-08T23:00:00+00:00")
    store = tmp_path / "history"
    history.append(store, pd.concat([load_sweep(a), load_sweep(b)], ignore_index=True))
    assert files(store) == ["sweep_date=2026-12-07/a-0.parquet", "sweep_date=2026-12-08/b-0.parquet"]


def test_the_night_is_the_earliest_start_and_none_without_starts():
    rows = pd.DataFrame({"started_at": ["2026-12-08T00:00:07+00:00", None, "2026-12-07T23:59:54+00:00"]})
    assert sweep_night(rows) == "2026-12-07"
    assert sweep_night(pd.DataFrame({"started_at": [None, ""]})) is None
