"""bench/gpu_check.sh --rehearse: the prepared GPU check, end to end on this CPU machine.

The check is written to run once, unattended, on a lent GPU box with minutes of device time;
a script that is only ever run there rots unseen (a renamed override, a moved record, a summary
that no longer parses) and the loan is wasted. The rehearsal runs the SAME script, with the
same steps into one sweep folder, the same report, summary and tarball, and differs only in
what the CPU can run (cpu ranks, the tiny model, small GEMM and message sizes, no wheels). So
this test proves the script cannot rot; it does not prove the GPU path itself (CUDA, NCCL,
NVML, the 1.3B/2.7B models, the wheels), which only runs on a GPU machine.
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NULL = "—"


def test_gpu_check_rehearsal(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("WHEELS", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # the preflight imported DeepSpeed and got the accelerator the runs use
    assert "preflight: deepspeed 0." in out, out[-4000:]
    assert "accelerator cpu" in out
    log = (tmp_path / "log.txt").read_text()
    assert "preflight: deepspeed" in log and "GPU CHECK:" in log  # the log holds what was printed

    # the summary: one line per run, all three ok, figures the CPU cannot have left null
    summary = (tmp_path / "summary.txt").read_text()
    lines = summary.splitlines()
    assert lines[-1] == "GPU CHECK: 3/3 runs ok", summary
    header = next(line for line in lines if line.startswith("step/workload")).split()
    runs = [line.split(None, len(header) - 1) for line in lines
            if line.split(" ", 1)[0] in ("gemm/gemm", "gpt/train", "nccl/allreduce")]
    assert sorted(r[0] for r in runs) == ["gemm/gemm", "gpt/train", "nccl/allreduce"], summary
    column = {name: i for i, name in enumerate(header)}
    gpt = [r for r in runs if r[0] == "gpt/train"]
    assert [r[column["strategy"]] for r in gpt] == ["zero2"], summary
    for run in runs:
        assert run[column["status"]] == "ok" and run[column["error"]] == NULL, summary
        for name in ("energy-J", "tok/J", "SM-MHz", "throttled"):  # no NVML on the CPU: never guessed
            assert run[column[name]] == NULL, (name, summary)
    for run in gpt:  # measured on the CPU too
        assert run[column["tok/s/dev"]] != NULL and run[column["of-GEMM"]] != NULL, summary
    assert "GEMM ceiling: bf16 " in summary and "fp32 " in summary
    assert "largest algbw: " in summary and "all_reduce " in summary
    assert "steps: gemm exit 0" in summary and "gpt exit 0" in summary and "nccl exit 0" in summary

    # one tarball: every run's record, the report, the log
    with tarfile.open(tmp_path / "gpu-check.tgz") as tar:
        names = tar.getnames()
    records = sorted(n for n in names if n.endswith("/result.json"))
    assert [n.split("/")[1].split("_")[0] for n in records] == ["gemm", "gpt", "nccl"], names
    assert "sweep/report/report.md" in names and "log.txt" in names and "summary.txt" in names
    assert any(n.startswith("sweep/.submitit/") for n in names)
    # what the device tool brings back: a few files at $OUT's top level
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["gpu-check.tgz", "log.txt", "summary.txt"]
