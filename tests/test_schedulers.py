"""Slurm accounting -> record status, on sacct output as Slurm prints it."""
from suite.schedulers.slurm import (expand_job_id, parse_attempts, parse_down_nodes, parse_sacct,
                                    status_from_slurm, slurm_parameters)


def test_sacct_lines_including_never_started_array_tasks():
    text = "33_0|CANCELLED by 0|00:00:01|0:0\n33_[0-3,7%1]|CANCELLED by 0|00:00:00|0:0\n" \
           "34|TIMEOUT|00:01:00|0:15\n35_2|RUNNING|00:00:09|0:0\n"
    states = parse_sacct(text)
    assert sorted(states) == ["33_0", "33_1", "33_2", "33_3", "33_7", "34", "35_2"]
    assert states["33_0"].elapsed == "00:00:01"  # the task's own line, not the summary
    assert states["33_7"].state == "CANCELLED" and states["34"].exit_code == "0:15"
    assert expand_job_id("12") == ["12"] and expand_job_id("9_[4]") == ["9_4"]


def test_a_node_failure_is_found_in_an_earlier_attempt_and_the_failed_node_named():
    # Slurm requeued the job after the node failure: only its first attempt says NODE_FAIL
    attempts = parse_attempts("NODE_FAIL|node[1-2]\nPENDING|None assigned\n")
    assert attempts == [("NODE_FAIL", "node[1-2]"), ("PENDING", "None assigned")]
    # sinfo -o '%N|%t|%E': down, not responding (*), drained; an idle or allocated node is not
    text = "node1|alloc|none\nnode2|down*|Not responding\nnode3|drain|bad DIMM\nnode4|idle*|none\nnode5|mix|none\n"
    assert parse_down_nodes(text) == [("node2", "down*: Not responding"), ("node3", "drain: bad DIMM"),
                                      ("node4", "idle*")]


def test_slurm_states_map_to_statuses():
    assert {s: status_from_slurm(s) for s in ("TIMEOUT", "CANCELLED", "OUT_OF_MEMORY",
                                              "NODE_FAIL", "PREEMPTED", "FAILED")} == {
        "TIMEOUT": "timeout", "CANCELLED": "cancelled", "OUT_OF_MEMORY": "oom",
        "NODE_FAIL": "node_fail", "PREEMPTED": "preempted", "FAILED": "error"}
    assert status_from_slurm("PENDING") is None and status_from_slurm("RUNNING") is None
    assert status_from_slurm("COMPLETED") == "error"  # completed, yet no record: not ok


# ---- the scheduler interface: both backends through one contract ----

import pytest  # noqa: E402

from suite import schedulers  # noqa: E402
from suite.plan import plan_run, to_object  # noqa: E402
from suite.results import STATUSES, config_hash, run_config  # noqa: E402
from suite.schedulers.base import PlannedRun, group_by_key  # noqa: E402


def _planned(compose_cfg, tmp_path, idx, *overrides):
    typed = to_object(compose_cfg(*overrides, "cluster.cpu_ranks=1", "cluster.gpus_per_node=1"))
    plan = plan_run(typed)
    config = run_config(typed, plan)
    return PlannedRun(idx, list(overrides), typed, plan, tmp_path / str(idx), config, config_hash(config), float(idx))


@pytest.mark.parametrize("name,overrides", [("local", []), ("slurm", ["cluster=slurm_local"])])
def test_every_scheduler_keeps_the_contract(compose_cfg, tmp_path, name, overrides):
    from conftest import cluster_up, require

    if name == "slurm":
        require(cluster_up(), "a Slurm cluster (run slurm/local-cluster.sh up)")
    scheduler = schedulers.get(name, str(tmp_path / "submitit" / "%j"))
    runs = [_planned(compose_cfg, tmp_path, i, *overrides, f"train.seed={i}") for i in range(2)]
    assert all(isinstance(scheduler.resources(r), dict) for r in runs)
    groups = schedulers.group_runs(scheduler, runs)
    assert sorted(r.idx for g in groups for r in g) == [0, 1]
    assert isinstance(scheduler.describe(groups[0]), str)
    scheduler.check(groups)  # a request the cluster can meet: no refusal
    jobs = [job for group in groups
            # int: a task pickled by reference that any Python can run; int("fail") raises
            for job in scheduler.submit(group, int, lambda r: ("fail" if r.idx else "7",))]
    assert len(jobs) == 2
    for job in jobs:
        schedulers.base.wait_until_done(job)
    assert jobs[0].results()[0] == 7
    status, details = scheduler.account(jobs[1])  # a job that left no record: its account
    assert status in STATUSES and status != "ok" and isinstance(details, dict)
    assert scheduler.unfinished([]) == []


def test_the_config_schema_offers_exactly_the_registered_schedulers():
    from suite.config import BACKENDS

    assert set(BACKENDS) == set(schedulers.SCHEDULERS)


def test_groups_are_ordered_shortest_first_within_and_across():
    # keys a, b; costs: a 5, b 1, a 2, b 9 -> b's group first (its shortest job is the shortest)
    assert group_by_key([("a", 5.0), ("b", 1.0), ("a", 2.0), ("b", 9.0)]) == [[1, 3], [2, 0]]


def test_a_missing_outside_part_fails_in_ci_and_skips_elsewhere(monkeypatch):
    from conftest import require

    require(True, "anything")  # present: nothing happens
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="a Slurm cluster is missing"):
        require(False, "a Slurm cluster")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="a Slurm cluster is missing"):
        require(False, "a Slurm cluster")


def test_a_run_placed_on_a_node_asks_slurm_for_that_node(compose_cfg):
    cfg = to_object(compose_cfg("cluster=slurm_local", "cluster.nodelist=node2"))
    assert slurm_parameters(cfg, plan_run(cfg, 0))["nodelist"] == "node2"
    cfg = to_object(compose_cfg("cluster=slurm_local"))
    assert "nodelist" not in slurm_parameters(cfg, plan_run(cfg, 0))


def test_reconciliation_asks_slurm_about_a_rerun_whose_folder_holds_an_old_record(tmp_path, monkeypatch):
    # issue 16: a resumed run that had failed before was taken as finished (its old record) while
    # its new job was still pending; once that job ended without a record, the old status stood
    from suite import results
    from suite.schedulers import slurm

    run_dir = tmp_path / "sweep" / "0_tiny"
    submission = dict(run_id="sweep/0_tiny", sweep_id="sweep", config={}, axes={"model": "tiny"}, plan={},
                      scheduler="slurm")
    old = results.make_record(run_id="sweep/0_tiny", sweep_id="sweep", status="oom", error="out of memory",
                              config={}, axes={}, metrics={}, env={}, started_at="t0", finished_at="t1")
    results.write_record(run_dir, old)
    results.write_submission(run_dir, **submission, job_id=None)  # the sweep run again: a new attempt
    results.write_submission(run_dir, **submission, job_id="42_0")
    state = {"42_0": slurm.SlurmJobState("42_0", "PENDING", "00:00:00", "0:0")}
    monkeypatch.setattr(slurm, "sacct_states", lambda ids: {j: state[j] for j in ids if j in state})
    assert schedulers.unfinished(tmp_path / "sweep") == ["0_tiny"]
    state["42_0"] = slurm.SlurmJobState("42_0", "CANCELLED", "00:00:05", "0:15")
    assert schedulers.unfinished(tmp_path / "sweep") == []
    new = results.read_record(run_dir / results.RESULT_FILE)
    assert new["status"] == "cancelled" and "without writing a record" in new["error"]
