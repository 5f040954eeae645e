"""More than one node, for real: the two test hosts of the local cluster (`slurm/local-cluster.sh
up --nodes 2`: each a network namespace with its own address, hostname and slurmd). Layouts with
ranks on both nodes train the data-parallel model; a slowed rank and its node are named; a node
that dies ends its run as `node_fail` while the sweep goes on; preflight flags a slowed node;
`down` leaves nothing behind. The tests that run sweeps share as few of them as they can."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_sweep, sweep_dirs, wait_for_nodes

pytestmark = pytest.mark.usefixtures("two_nodes")
TWO_NODES = ["cluster=slurm_local", "cluster.nodes=2"]
CLUSTER = ["bash", str(REPO / "slurm" / "local-cluster.sh")]


def records(sweep: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]


def max_difference(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def across(tmp_path_factory):
    """The tiny Llama's parity sweep with ranks on both nodes, rank 1 (on node2) slowed:
    2 nodes x 1 rank in ddp, pp2 (a stage per node), sp2 with ZeRO-3 (Ulysses and ZeRO-3's
    gathers across nodes) and PyTorch's torch DDP and FSDP2; 2 nodes x 2 ranks in tp2 with ZeRO-1 (tensor parallel inside a node, data parallel
    across). Records by strategy, and the first sweep's report."""
    out = {}
    for name, overrides in (("1_rank_per_node", ["cluster.gpus_per_node=1", "strategy=ddp,pp2,sp2_zero3,torch_ddp,fsdp2",
                                                 "train.fault=slow", "train.fault_rank=1"]),
                            ("2_ranks_per_node", ["cluster.gpus_per_node=2", "strategy=tp2_zero1",
                                                  "train.timed_steps=3"])):
        results = tmp_path_factory.mktemp(name)
        done = run_sweep(results, *TWO_NODES, "model=llama_tiny", "experiment=parity", *overrides)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        [sweep] = sweep_dirs(results)
        out.update({r["strategy"]: r for r in records(sweep)})
        out.setdefault("report", (sweep / "report" / "report.md").read_text())
    return out


def test_layouts_with_ranks_on_both_nodes_train_the_data_parallel_model(across):
    runs = {k: v for k, v in across.items() if k != "report"}
    assert {s: (r["status"], r["nodes"], r["ranks_per_node"], r["data_parallel"], r["tensor_parallel"],
                r["pipeline_parallel"], r["sequence_parallel"]) for s, r in runs.items()} == {
        "ddp": ("ok", 2, 1, 2, 1, 1, 1), "pp2": ("ok", 2, 1, 1, 1, 2, 1),
        "sp2_zero3": ("ok", 2, 1, 1, 1, 1, 2), "tp2_zero1": ("ok", 2, 2, 2, 2, 1, 1),
        "torch_ddp": ("ok", 2, 1, 2, 1, 1, 1), "fsdp2": ("ok", 2, 1, 2, 1, 1, 1)}
    # each rank's host, in rank order: one rendezvous across two hosts
    for strategy in ("ddp", "pp2", "sp2_zero3", "torch_ddp", "fsdp2"):
        assert runs[strategy]["metrics"]["rank_hosts"] == ["node1", "node2"]
        assert runs[strategy]["env"]["hostnames"] == ["node1", "node2"]
    assert runs["tp2_zero1"]["metrics"]["rank_hosts"] == ["node1", "node1", "node2", "node2"]
    assert "5 of 5 compared runs match plain data parallel" in across["report"]  # torch's engines too
    # tensor parallel inside each node, data parallel across: the same model as plain ddp
    # (the same global batch of 8 samples per step)
    reference = runs["ddp"]["metrics"]["loss_per_step"]
    assert max_difference(runs["tp2_zero1"]["metrics"]["loss_per_step"][:5], reference) < 1e-4
    for r in runs.values():
        m = r["metrics"]
        assert len(m["rank_step_time_s"]) == len(m["rank_peak_memory_bytes"]) == r["world_size"]
        assert all(t > 0 for t in m["rank_step_time_s"]) and all(b > 0 for b in m["rank_peak_memory_bytes"])


def test_the_slowed_rank_and_its_node_are_named(across):
    runs, md = across, across["report"]
    # rank 1's forward passes take twice as long: it is the slowest in every layout that times them
    for strategy in ("ddp", "sp2_zero3", "torch_ddp", "fsdp2"):
        forward = runs[strategy]["metrics"]["rank_forward_time_s"]
        assert forward[1] > forward[0], (strategy, forward)
    assert runs["pp2"]["metrics"]["rank_forward_time_s"] == [None, None]  # one schedule: not split
    assert "- stragglers: 4 of 4 runs (rank 1 on node2); slow node(s): node2" in md
    stragglers = md.split("## Stragglers")[1].split("\n## ")[0]
    assert stragglers.count("| YES ") == 4 + 1  # four runs, and node2 in the nodes table
    # without the fault, nothing is flagged: the 2 x 2 sweep, and tests/test_parallel.py's parity sweeps


def test_a_job_that_lost_a_rank_before_slurm_saw_its_node_die_is_a_node_failure():
    # The survivors of a dead node can end the job before Slurm declares the node dead (the
    # accounting database lags slurmctld; on a real cluster SlurmdTimeout is minutes): the
    # driver then looks for one of the job's nodes going down, for a few seconds.
    from suite.schedulers.slurm import node_failure_of

    job = subprocess.run(["sbatch", "--parsable", "-N", "2", "--output=/dev/null", "--wrap", "false"], capture_output=True,
                         text=True, check=True).stdout.strip()
    deadline, ran = time.monotonic() + 60, ""  # until the accounting database has its end and nodes (it lags)
    while time.monotonic() < deadline and ran != "FAILED|node[1-2]":
        time.sleep(0.5)
        ran = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State,NodeList", "-j", job], capture_output=True,
                             text=True).stdout.strip()
    assert ran == "FAILED|node[1-2]", ran
    assert node_failure_of(job, peer_lost=True, grace_s=1) is None  # both nodes up: a plain failure
    try:
        subprocess.run(["scontrol", "update", "nodename=node2", "state=drain", "reason=test: gone"], check=True)
        found = node_failure_of(job, peer_lost=True, grace_s=10)
        assert found is not None, [subprocess.run(command, capture_output=True, text=True).stdout for command in (
            ["sinfo", "-N", "-o", "%N|%t|%E"], ["sacct", "-D", "-X", "-P", "-n", "-o", "JobID,State,NodeList", "-j", job])]
        error, details = found
        assert node_failure_of(job, peer_lost=False) is None  # no NODE_FAIL, and nobody saw a peer go
    finally:
        subprocess.run(["scontrol", "update", "nodename=node2", "state=resume"], check=True)
        assert wait_for_nodes() == ["node1", "node2"]  # responding again, for the tests after this one
    assert f"job {job} on node[1-2] lost a rank while a node of it went down; failed node: node2 (drain" in error
    assert details["failed_nodes"] == ["node2"] and details["slurm_state"] is None


def test_a_node_that_dies_ends_its_run_as_node_fail_and_the_sweep_goes_on(tmp_path):
    # Two runs on both nodes, one after the other: the first trains 3 steps; in the second,
    # rank 1 (node2) stops at step 3 and node2 dies while rank 0 waits for it.
    env = {**os.environ, "SUITE_RESULTS_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    assert wait_for_nodes() == ["node1", "node2"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "suite.sweep", "-m", *TWO_NODES, "cluster.gpus_per_node=1", "model=tiny", "strategy=ddp",
         "optimizer=sgd_momentum", "train.timed_steps=3", "train.fault=none,hang", "train.fault_rank=1",
         "train.fault_step=3"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = None
        deadline = time.monotonic() + 240
        while job is None and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(1)
            for sub in tmp_path.glob("*/1_*/submission.json"):
                job = json.loads(sub.read_text()).get("job_id")
        assert job, "the second run was not submitted: " + (sweep.stdout.read()[-3000:] if sweep.poll() is not None else "")
        while time.monotonic() < deadline:  # running, and its ranks past their imports
            state = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job],
                                   capture_output=True, text=True).stdout.split()
            if state and state[0] == "RUNNING":
                break
            time.sleep(1)
        # until rank 1 hangs at step 3 (it says so in the job's log)
        logs = next(tmp_path.glob("*/1_*/submission.json")).parent.parent / ".submitit" / job
        while time.monotonic() < deadline and not any(
                "train.fault=hang at step 3" in p.read_text(errors="replace") for p in logs.glob("*_log.out")):
            time.sleep(0.5)
        subprocess.run([*CLUSTER, "kill-node", "node2"], check=True)
        # what a health check does on a real cluster (Slurm alone would wait SlurmdTimeout)
        subprocess.run(["scontrol", "update", "nodename=node2", "state=down", "reason=test: node2 died"], check=True)
        output, _ = sweep.communicate(timeout=180)
        # Slurm requeues a job whose node failed; the driver cancels that attempt (a rerun
        # would hang again once node2 is back, and hold every later job of the same name)
        left = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout.strip()
    finally:
        if sweep.poll() is None:
            sweep.kill()
        subprocess.run(["scancel", "--user", "root"], capture_output=True)  # whatever a failure left
        subprocess.run([*CLUSTER, "up"], check=True, capture_output=True)  # node2 back
    assert left == "", left
    assert sweep.returncode == 1, output[-3000:]  # not every run is ok
    [folder] = sweep_dirs(tmp_path)
    runs = {r["config"]["train"]["fault"]: r for r in records(folder)}
    assert runs["none"]["status"] == "ok"
    failed = runs["hang"]
    assert failed["status"] == "node_fail", failed["error"]
    assert "failed node: node2 (down" in failed["error"] and failed["env"]["failed_nodes"] == ["node2"]
    # rank 0 (node1) saw its peer vanish first; its words are kept
    assert "Connection closed by peer" in (failed["env"]["survivor_error"] or "")
    md = (folder / "report" / "report.md").read_text()
    assert "runs: 2, ok: 1, failed: 1" in md and "| node_fail |" in md
    assert wait_for_nodes() == ["node1", "node2"]


def test_preflight_flags_the_slowed_node(tmp_path, monkeypatch):
    # every timed region on node2 takes twice as long (a test-only setting, recorded). The two
    # nodes of the local cluster share this machine's 2 cores: their jobs, run side by side as on a
    # real cluster, measured each other's load (CI once saw node1 flagged too). Slurm's singleton
    # dependency runs the sweep's jobs one after the other here, under a job name of their own
    # (singleton waits on every job of that name and user).
    # The verdict must hold on a loaded machine: a busy loop holds one of the 2 cores for the
    # whole sweep (CI once saw a few seconds of another process's load flag node1). Each point
    # is timed in 5 interleaved rounds (its figure: the median) and long enough (tens of ms a
    # round) for the rounds' spread, which raises the threshold, to stay below the slowdown.
    monkeypatch.setenv("SUITE_TEST_SLOW_HOST", "node2:1.0")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        done = run_sweep(tmp_path, "experiment=preflight", "cluster=slurm_local", "submit.repeats=1",
                         "workload.gemm_sizes=[256,384]", "workload.message_bytes=[1048576,4194304]",
                         "workload.iters=8", "+cluster.sbatch_extra.dependency=singleton",
                         f"+cluster.sbatch_extra.job_name={tmp_path.name}")
    finally:
        busy.kill()
        busy.wait()
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the acceptance check failed
    assert "submit.each_node: 1-node points run on each of 2 nodes: node1, node2" in done.stdout + done.stderr
    [sweep] = sweep_dirs(tmp_path)
    runs = records(sweep)
    hosts = sorted(tuple(r["metrics"]["rank_hosts"]) for r in runs)
    assert hosts == [("node1", "node1"), ("node1", "node1", "node2", "node2"), ("node2", "node2")]
    assert sorted(r["config"]["cluster"]["nodelist"] or "" for r in runs) == ["", "node1", "node2"]
    together = next(r for r in runs if r["nodes"] == 2)["metrics"]
    assert {row["scope"] for row in together["collectives"]} == {"world", "intra_node", "inter_node"}
    assert together["busbw_intra_node_gbps"]["all_reduce"] > 0 and together["busbw_inter_node_gbps"]["all_reduce"] > 0
    alone = next(r for r in runs if r["metrics"]["rank_hosts"] == ["node1", "node1"])["metrics"]
    assert alone["busbw_inter_node_gbps"] is None  # one node: nothing crossed the network
    md = (sweep / "report" / "report.md").read_text()
    assert "runs: 3, ok: 3" in md and "- preflight: 2 nodes compared; below the others: node2 (" in md
    section = md.split("## Preflight")[1].split("\n## ")[0]
    assert [line.split("|")[1].strip() for line in section.splitlines() if "| YES" in line] == ["node2"]


def test_down_removes_every_namespace_link_host_entry_and_daemon_it_made():
    started = time.monotonic()
    try:
        subprocess.run([*CLUSTER, "down"], check=True, capture_output=True)
        assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
                    .stdout.split() if ns.startswith("suite-node")]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert "suitebr0" not in links and "suite-v" not in links
        assert "suite local-cluster" not in Path("/etc/hosts").read_text()
        running = set()
        for comm in Path("/proc").glob("[0-9]*/comm"):
            try:
                running.add(comm.read_text().strip())
            except OSError:  # the process ended meanwhile
                pass
        assert not running & {"slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"}
    finally:
        subprocess.run([*CLUSTER, "up", "--nodes", "2"], check=True, capture_output=True)
    print(f"down and up --nodes 2 in {time.monotonic() - started:.1f} s")
    assert wait_for_nodes() == ["node1", "node2"]
