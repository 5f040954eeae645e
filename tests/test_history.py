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


def test_the_newest_nights_are_read_and_the_older_files_never_opened(tmp_path):
    store = tmp_path / "history"
    for day in range(1, 6):  # five nights, one sweep each
        sweep = tmp_path / f"2026-12-0{day}_01-00-00"
        write(sweep, "0_ddp", f"2026-12-0{day}T01:00:00+00:00", tokens=1000.0 + day)
        history.append(store, load_sweep(sweep))
    undated = load_sweep(tmp_path / "2026-12-01_01-00-00").assign(sweep_id="undated", started_at=None,
                                                                   sweep_date=None)
    history.append(store, undated)  # a sweep that names no night is read whatever the nights asked
    # a sweep moved out of its night leaves an empty partition, which is no night
    (store / "sweep_date=2026-12-09").mkdir()
    for path in store.glob("sweep_date=2026-12-0[12]/*.parquet"):
        path.write_bytes(b"not parquet")  # opened, these would fail the load
    assert history.nights(store) == [f"2026-12-0{day}" for day in range(1, 6)]
    loaded = history.load(store, ["sweep_id", "tokens_per_s_per_device"], last_nights=3)
    assert sorted(loaded.sweep_id) == ["2026-12-03_01-00-00", "2026-12-04_01-00-00", "2026-12-05_01-00-00",
                                       "undated"]
    assert sorted(loaded.sweep_date.dropna()) == ["2026-12-03", "2026-12-04", "2026-12-05"]
    assert list(history.load(store, last_nights=0).sweep_id) == ["undated"]


def test_a_schema_field_at_its_default_changes_no_key_and_old_keys_are_made_again(tmp_path):
    import json
    from dataclasses import asdict

    from suite.config import SuiteConfig
    from suite.report.analysis import configuration_key

    tonight = asdict(SuiteConfig())
    # a record written before precision.tf32, workload.rounds and the MoE fields existed
    before = json.loads(json.dumps(tonight))
    for group, field in (("precision", "tf32"), ("workload", "rounds"), ("model", "n_experts"),
                         ("strategy", "expert_parallel")):
        before[group].pop(field)
    assert configuration_key(json.dumps(before)) == configuration_key(json.dumps(tonight))
    # a history file keyed by the scheme before (every field filled in: another hash) and with no
    # config_key_version column: its keys are made again on loading, and match tonight's
    old = tmp_path / "2026-12-01"
    write(old, "0_ddp", "2026-12-01T01:00:00+00:00")
    frame = load_sweep(old)
    frame = frame.assign(config_json=json.dumps(before), config_key="made-by-version-1").drop(
        columns="config_key_version")
    store = tmp_path / "history"
    history.append(store, frame)
    loaded = history.load(store, history.COLUMNS)
    assert loaded.config_key.tolist() == [configuration_key(json.dumps(tonight))]
