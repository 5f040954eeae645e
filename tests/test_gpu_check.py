"""bench/gpu_check.sh --rehearse: the prepared GPU check, end to end on this CPU machine.

The check is written to run once, unattended, on a lent GPU box with minutes of device time;
a script that is only ever run there rots unseen (a renamed override, a moved record, a summary
that no longer parses) and the loan is wasted. The rehearsal runs the SAME script, with the
same steps into one sweep folder, the same report, summary and tarball, and differs only in
what the CPU can run (cpu ranks, the tiny model, small GEMM and message sizes, no wheels; a
declared small "GPU" makes the memory model refuse gpt_2_7b, as an H100's 80 GB does). So
this test proves the script cannot rot; it does not prove the GPU path itself (CUDA, NCCL,
NVML, the 1.3B/2.7B models, the wheels), which only runs on a GPU machine.

What comes back from the box is OUT, and only so much of it: at most 8 files of 16 MiB each
(64 MiB in all), none more than 2 folders down, names of letters, digits, '.', '_' and '-'.
"""
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NULL = "—"
MIB = 2 ** 20


def comes_back(out: Path) -> list:
    """What of OUT the device tool would not bring back (an empty list: all of it comes back)."""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    problems = [f"{len(files)} files (over 8)"] if len(files) > 8 else []
    if sum(p.stat().st_size for p in files) > 64 * MIB:
        problems.append("over 64 MiB in all")
    for p in files:
        rel = p.relative_to(out)
        if p.is_symlink() or p.stat().st_size > 16 * MIB:
            problems.append(f"{rel}: a link or over 16 MiB")
        if len(rel.parts) > 3:  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
            problems.append(f"{rel}: more than 2 folders down")
        if not all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts):
            problems.append(f"{rel}: a name outside [A-Za-z0-9._-]")
    return problems


def test_gpu_check_rehearsal(tmp_path):
    out_dir, sweep = tmp_path / "out", tmp_path / "sweep"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out_dir), "SWEEP_DIR": str(sweep)}
    env.pop("WHEELS", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    tmp_path = out_dir  # what comes back from the box

    # the preflight imported DeepSpeed and got the accelerator the runs use
    assert "preflight: deepspeed 0." in out, out[-4000:]
    assert "accelerator cpu" in out
    # the ranks rendezvous at MASTER_ADDR, the hostname: the preflight says whether it resolves
    host = re.search(r"^preflight: hostname (\S+) (resolves to \S+|does NOT resolve)", out, re.M)
    assert host, out[-4000:]
    log = (tmp_path / "log.txt").read_text()
    assert "preflight: deepspeed" in log and "GPU CHECK:" in log  # the log holds what was printed

    # the summary: one line per run, all three ok, figures the CPU cannot have left null
    summary = (tmp_path / "summary.txt").read_text()
    lines = summary.splitlines()
    # three runs ok; the point the memory model refuses is no run, and does not stop the others
    assert lines[-1] == "GPU CHECK: 3/3 runs ok, 1 refused before starting", summary
    assert "written for: NVIDIA H200 (141 GB)" in summary  # the GPU its sizes are chosen for
    assert "ran on: no GPU: rehearsal on the CPU" in summary
    assert f"hostname: {host.group(1)} {host.group(2)}" in summary
    refused = lines[lines.index(next(line for line in lines if line.startswith("refused before starting (1:"))) + 1]
    assert refused.startswith("  gpt/train gpt_2_7b zero2 bf16: model=gpt_2_7b"), summary
    assert "GiB per device by the memory model" in refused and "more than cluster.gpu_memory_gb=4" in refused
    header = next(line for line in lines if line.startswith("step/workload")).split()
    rows = [line.split(None, len(header) - 1) for line in lines
            if line.split(" ", 1)[0] in ("gemm/gemm", "gpt/train", "nccl/allreduce")]
    column = {name: i for i, name in enumerate(header)}
    assert [(r[column["model"]], r[column["status"]]) for r in rows if r[column["status"]] == "invalid"] \
        == [("gpt_2_7b", "invalid")], summary
    runs = [r for r in rows if r[column["status"]] != "invalid"]
    assert sorted(r[0] for r in runs) == ["gemm/gemm", "gpt/train", "nccl/allreduce"], summary
    gpt = [r for r in runs if r[0] == "gpt/train"]
    assert [(r[column["model"]], r[column["strategy"]]) for r in gpt] == [("tiny", "zero2")], summary
    for run in runs:
        assert run[column["status"]] == "ok" and run[column["error"]] == NULL, summary
        for name in ("energy-J", "tok/J", "SM-MHz", "throttled"):  # no NVML on the CPU: never guessed
            assert run[column[name]] == NULL, (name, summary)
    for run in gpt:  # measured on the CPU too
        assert run[column["tok/s/dev"]] != NULL and run[column["of-GEMM"]] != NULL, summary
    assert "GEMM ceiling: bf16 " in summary and "fp32 " in summary
    assert "largest algbw: " in summary and "all_reduce " in summary
    # each step's exit and its own runs; after the refusal the sweep's exit is 1 (a refused
    # point is a run of the folder that is not ok), and the summary says why
    steps = next(line for line in lines if line.startswith("steps: "))
    assert re.fullmatch(r"steps: gemm exit 0 in \d+ s of \d+ s: 1 ok; gpt exit 1 in \d+ s of \d+ s: 1 ok, "
                        r"1 refused; nccl exit 1 in \d+ s of \d+ s: 1 ok", steps), summary
    assert any(line.startswith("exit 1: a run of the sweep folder so far is not ok") for line in lines)

    # one tarball: every record of the sweep (the refused point's too), the report, the log
    with tarfile.open(tmp_path / "gpu-check.tgz") as tar:
        names = tar.getnames()
    records = sorted(n for n in names if n.endswith("/result.json"))
    assert [n.split("/")[1].split("_")[0] for n in records] == ["gemm", "gpt", "gpt", "nccl"], names
    assert records == sorted(f"sweep/{p.relative_to(sweep)}" for p in sweep.glob("*/result.json")), names
    assert "sweep/report/report.md" in names and "log.txt" in names and "summary.txt" in names
    assert any(n.startswith("sweep/.submitit/") for n in names)
    # what the device tool brings back: the log, the summary and the tarball, within its limits;
    # the sweep folder itself stays outside OUT
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir())
    assert found == ["gpu-check.tgz", "log.txt", "summary.txt"], found
    assert comes_back(tmp_path) == []
    assert "all of it comes back from the box" in out
