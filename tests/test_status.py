"""`python -m suite.status`'s rules with hand-worked numbers; on a running and a finished Slurm
sweep in tests/test_slurm.py (test_timeout_cancel_and_exception_each_end_as_a_record)."""
import json

from suite import status
from suite.status import LOST, PENDING, RUNNING, RunState

NOW = "2026-11-30T12:00:00+00:00"


def test_a_runs_state_comes_from_its_record_then_its_scheduler_then_its_submission():
    record = {"status": "oom", "error": "CUDA out of memory", "metrics": {"run_wall_s": 42.0}}
    assert status.state_of("a", record, None, None, NOW) == RunState("a", "oom", 42.0, "CUDA out of memory")
    old = {"status": "ok", "started_at": "2026-11-30T11:00:00+00:00", "finished_at": "2026-11-30T11:01:30+00:00"}
    assert status.state_of("a", old, None, None, NOW).elapsed_s == 90.0  # a record without run_wall_s
    unsent = {"job_id": None, "submitted_at": NOW}
    assert status.state_of("b", None, unsent, None, NOW).state == PENDING
    sent = {"job_id": "7_1", "submitted_at": "2026-11-30T11:59:00+00:00"}
    assert status.state_of("c", None, sent, ("PENDING", 0.0), NOW).state == PENDING
    assert status.state_of("c", None, sent, ("RUNNING", 75.0), NOW) == RunState("c", RUNNING, 75.0, "job 7_1 RUNNING")
    assert status.state_of("c", None, sent, ("CANCELLED", 5.0), NOW).state == LOST
    # no word from the scheduler (no accounting here): running since its submission, said so
    unknown = status.state_of("c", None, sent, None, NOW)
    assert unknown.state == RUNNING and unknown.elapsed_s == 60.0 and "did not say" in unknown.detail


def test_slurm_elapsed_reads_days_hours_minutes_seconds():
    assert status.slurm_elapsed_s("00:01:05") == 65
    assert status.slurm_elapsed_s("1-02:00:00") == 93600
    assert status.slurm_elapsed_s("03:07") == 187
    assert status.slurm_elapsed_s("INVALID") is None


def test_counts_and_time_left():
    states = [RunState("a", "ok", 100.0), RunState("b", "ok", 140.0), RunState("c", "timeout", 60.0),
              RunState("d", RUNNING, 50.0), RunState("e", PENDING, None), RunState("f", PENDING, None)]
    assert status.counts(states) == {PENDING: 2, RUNNING: 1, "ok": 2, "timeout": 1}
    # mean finished run 100 s: 2 pending x 100 + the running one's 100 - 50, over 1 running at once
    assert status.time_left_s(states) == 250.0
    two_running = states[:3] + [RunState("d", RUNNING, 50.0), RunState("e", RUNNING, 90.0)]
    assert status.time_left_s(two_running) == (50.0 + 10.0) / 2
    assert status.time_left_s([RunState("x", PENDING, None)]) is None  # nothing finished yet
    line = status.counts_line(states)
    assert line.startswith("3/6 runs finished: 2 pending, 1 running, 2 ok, 1 timeout; about 0:04:10 left")


def test_a_sweep_folder_lists_every_planned_run_and_invalid_records(tmp_path):
    status.write_sweep_file(tmp_path, [{"name": "0_a", "label": "x=1"}, {"name": "1_b", "label": "x=2"}], "local")
    (tmp_path / "0_a").mkdir()
    (tmp_path / "0_a" / "result.json").write_text(json.dumps({"status": "ok", "metrics": {"run_wall_s": 9.0}}))
    (tmp_path / "2_bad").mkdir()  # an invalid point's record, written without a submission
    (tmp_path / "2_bad" / "result.json").write_text(json.dumps({"status": "invalid", "error": "bad"}))
    states = status.sweep_states(tmp_path)
    assert [(s.name, s.state) for s in states] == [("0_a", "ok"), ("1_b", PENDING), ("2_bad", "invalid")]
