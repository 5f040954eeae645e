"""Slurm accounting -> record status, on sacct output as Slurm prints it."""
from suite.collect import expand_job_id, parse_sacct, status_from_slurm


def test_sacct_lines_including_never_started_array_tasks():
    text = "33_0|CANCELLED by 0|00:00:01|0:0\n33_[0-3,7%1]|CANCELLED by 0|00:00:00|0:0\n" \
           "34|TIMEOUT|00:01:00|0:15\n35_2|RUNNING|00:00:09|0:0\n"
    states = parse_sacct(text)
    assert sorted(states) == ["33_0", "33_1", "33_2", "33_3", "33_7", "34", "35_2"]
    assert states["33_0"].elapsed == "00:00:01"  # the task's own line, not the summary
    assert states["33_7"].state == "CANCELLED" and states["34"].exit_code == "0:15"
    assert expand_job_id("12") == ["12"] and expand_job_id("9_[4]") == ["9_4"]


def test_slurm_states_map_to_statuses():
    assert {s: status_from_slurm(s) for s in ("TIMEOUT", "CANCELLED", "OUT_OF_MEMORY",
                                              "NODE_FAIL", "PREEMPTED", "FAILED")} == {
        "TIMEOUT": "timeout", "CANCELLED": "cancelled", "OUT_OF_MEMORY": "oom",
        "NODE_FAIL": "node_fail", "PREEMPTED": "preempted", "FAILED": "error"}
    assert status_from_slurm("PENDING") is None and status_from_slurm("RUNNING") is None
    assert status_from_slurm("COMPLETED") == "error"  # completed, yet no record: not ok
