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


def test_groups_are_ordered_shortest_first_within_and_across(tmp_path):
    # keys a, b; costs: a 5, b 1, a 2, b 9 -> b's group first (its shortest job is the shortest)
    assert group_by_key([("a", 5.0), ("b", 1.0), ("a", 2.0), ("b", 9.0)]) == [[1, 3], [2, 0]]

    # the same through a scheduler: runs asking for the same resources go out together
    class ByNodes(schedulers.base.Scheduler):
        def resources(self, run):
            # the same request written in two key orders, and a value JSON cannot write (a Path)
            if run.idx % 2:
                return {"nodes": run.config["nodes"], "folder": tmp_path}
            return {"folder": tmp_path, "nodes": run.config["nodes"]}

        def submit(self, group, job_function, job_args, started=None):
            return []

    def planned(idx, nodes, cost):
        return PlannedRun(idx, [], None, None, tmp_path, {"nodes": nodes}, "h", cost)

    runs = [planned(0, 2, 9.0), planned(1, 1, 4.0), planned(2, 1, 1.0), planned(3, 2, 3.0)]
    groups = schedulers.group_runs(ByNodes(str(tmp_path)), runs)
    # 1 node: runs 2 (cost 1), 1 (cost 4); 2 nodes: runs 3 (cost 3), 0 (cost 9); the group with
    # the shortest run first
    assert [[r.idx for r in g] for g in groups] == [[2, 1], [3, 0]]


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


# ---- the interface's own pure parts: its defaults, the waiting loop, the submitted scheduler ----

class _Minimal(schedulers.base.Scheduler):
    """A backend that implements only what it must: the defaults are what the rest gets."""

    def resources(self, run):
        return {}

    def submit(self, group, job_function, job_args, started=None):
        return []


def test_a_backend_inherits_defaults_that_claim_nothing(tmp_path):
    import socket

    scheduler = _Minimal(str(tmp_path))
    assert scheduler.folder == str(tmp_path)
    assert scheduler.node_names(None) == [socket.gethostname()]  # a local backend: this machine
    assert scheduler.describe([]) == ""
    assert scheduler.account(object()) == ("error", {})  # no record and no account: not ok
    assert scheduler.node_failure(object()) is None and scheduler.node_failure(object(), True) is None
    assert scheduler.unfinished([tmp_path]) == []
    scheduler.check([[]])  # refuses nothing


def test_a_runs_label_is_its_overrides_without_hydras_own(tmp_path):
    def planned(overrides):
        return PlannedRun(0, overrides, None, None, tmp_path, {}, "h", 0.0)

    assert planned(["strategy=zero2", "hydra.job.num=3"]).label == "strategy=zero2"
    assert planned([]).label == "(defaults)"


class _Job:
    """A job that ends after `polls` calls of done()."""

    def __init__(self, polls):
        self.polls = polls

    def done(self):
        self.polls -= 1
        return self.polls < 0


def test_waiting_for_a_job_checks_for_a_node_failure_every_interval(monkeypatch):
    import time

    clock, slept = iter(range(1000)), []  # each reading of the clock 1 s after the last
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(time, "sleep", slept.append)
    # no check: returns None once the job is done, after asking done() 4 times (3 x False),
    # sleeping the default quarter second between
    job = _Job(3)
    assert schedulers.base.wait_until_done(job) is None and job.polls == -1
    assert slept == [0.25, 0.25, 0.25]
    # a check that finds nothing, every 5 s by default: asked while the job runs. The clock
    # reads 0 at the start, then 1, 2, 3, 4 after the sleeps (under 5 s: no check), 5 (5 s:
    # check; the clock reads 6 for the next interval), 7 ... 10 (4 s), 11 (5 s: check)
    asked = []
    clock = iter(range(1000))
    job = _Job(10)
    assert schedulers.base.wait_until_done(job, check=lambda: asked.append(1)) is None
    assert len(asked) == 2
    # a check that finds a node failure: returned at once, the job not waited for further
    job = _Job(100)
    found = schedulers.base.wait_until_done(job, check=lambda: "node2 down", check_every_s=5.0)
    assert found == "node2 down" and job.polls > 90


def test_the_scheduler_a_run_was_submitted_to_is_read_from_its_submission(tmp_path):
    from suite import results

    assert schedulers.base.submitted_scheduler(tmp_path) is None  # never submitted
    (tmp_path / results.SUBMISSION_FILE).write_text('{"scheduler": "slurm"}')
    assert schedulers.base.submitted_scheduler(tmp_path) == "slurm"
    (tmp_path / results.SUBMISSION_FILE).write_text('{"run_id": "x"}')  # written before the field
    assert schedulers.base.submitted_scheduler(tmp_path) is None
