"""The summary of one bench/gpu_check.sh sweep folder, from the suite's own collation: one line
per run (status, error, tokens/s per device, MFU, share of the measured GEMM ceiling, step CV,
peak memory, energy, tokens per joule, SM clock, throttling), the GEMM ceiling per dtype and the
largest collective bandwidth, the points the plan refused before anything started (status
`invalid`: the memory model says they do not fit this GPU) each with its full reason, each step's
exit code, the wall time, and a last line `GPU CHECK: <ok>/<runs> runs ok` (runs: what was
started or planned to start; `, <n> refused before starting` added when points were refused).
Above the table: the GPU the check was written for, the GPU it ran on, and whether the hostname
resolves (the ranks rendezvous at MASTER_ADDR, the hostname). A null figure prints as `—`.

    python bench/gpu_summary.py SWEEP [--out FILE] [--expect STEP=N ...]
                                [--step STEP=RC:SECONDS:LIMIT ...] [--wall SECONDS]
                                [--written-for TEXT] [--device TEXT] [--host TEXT]
    python bench/gpu_summary.py --close SWEEP --status timeout --why TEXT

--expect: runs a step plans; one that left no folder at all (its step was killed before it
started) counts as a run that is not ok. --close: give every run folder of SWEEP that has a
submission but no record (its step was killed) a record with that status and error, so the
report shows it as a failed row rather than a gap.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the suite, run from anywhere

NULL = "—"
GIB = 2 ** 30


def close_unrecorded(sweep: Path, status: str, why: str) -> List[Path]:
    """Records for runs whose folder has a submission and no record; returns their folders."""
    from suite import results

    closed = []
    for sub in sorted(sweep.glob(f"*/{results.SUBMISSION_FILE}")):
        if not (sub.parent / results.RESULT_FILE).exists():
            results.write_record_from_submission(sub.parent, status=status, error=why,
                                                 details={"written_by": "bench/gpu_check.sh"})
            closed.append(sub.parent)
    return closed


def is_null(value) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt(value, spec: str = "") -> str:
    if is_null(value):
        return NULL
    if isinstance(value, float) and not math.isfinite(value):
        return NULL
    return format(value, spec)


def pct(value, decimals: int = 1) -> str:
    return NULL if is_null(value) else f"{100 * value:.{decimals}f}%"


def num(x: float) -> str:
    """One decimal for hardware-sized figures, three significant digits for a CPU's small ones."""
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def share(value) -> str:
    """A share of a ceiling (MFU, of GEMM ceiling); above 100% it is a measurement error (a
    wrong peak, a ceiling measured on shapes too small), marked with `!` as the report does."""
    from suite.metrics import implausible

    return pct(value) + ("!" if not is_null(value) and implausible(float(value)) else "")


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n:g} B"


def step_of(run_id) -> str:
    """gpu_check.sh names each run folder <step>_<job num>_<model>_<strategy>."""
    return str(run_id).rsplit("/", 1)[-1].split("_", 1)[0]


def table(rows: List[List[str]]) -> List[str]:
    """Left-aligned columns two spaces apart; the last column (the error) is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip() for r in rows]


HEADER = ["step/workload", "model", "strategy", "precision", "status", "tok/s/dev", "MFU",
          "of-GEMM", "step-CV", "peak-GiB", "energy-J", "tok/J", "SM-MHz", "throttled", "error"]


def summarize(sweep: Path, expect: Dict[str, int], steps: List[str], wall: Optional[float],
              written_for: Optional[str] = None, device: Optional[str] = None,
              host: Optional[str] = None) -> str:
    import pandas as pd
    from suite.report.analysis import measured_ceilings, of_gemm_ceiling
    from suite.report.collate import load_sweep

    frame = load_sweep(sweep) if sweep.is_dir() else None
    lines = [f"gpu_check summary: {sweep}"]
    if written_for:
        lines.append(f"written for: {written_for}")
    if device:
        lines.append(f"ran on: {device}")
    if host:
        lines.append(f"hostname: {host}")
    if frame is None or frame.empty:
        frame = load_sweep(Path("/nonexistent-empty-sweep"))  # the schema, no rows
    frame = frame.assign(step=[step_of(r) for r in frame.run_id])
    ceilings = measured_ceilings(frame)
    training = frame[frame.workload == "train"]
    of_ceiling = of_gemm_ceiling(training, ceilings) if not training.empty else pd.Series(dtype="float64")

    rows = [HEADER]
    extra: Dict[int, List[str]] = {}
    for i, r in frame.iterrows():
        micro = r.workload != "train"  # a micro-benchmark measures no model, strategy or precision
        error = NULL if is_null(r.error) else " ".join(str(r.error).split())[:120]
        throttled = NULL if is_null(r.throttled) else ("yes" if r.throttled else "no")
        rows.append([
            f"{r.step}/{r.workload}", NULL if micro else fmt(r.model), NULL if micro else fmt(r.strategy),
            NULL if micro else fmt(r.precision), fmt(r.status), fmt(r.tokens_per_s_per_device, ".0f"),
            share(r.mfu), share(of_ceiling.get(i)), pct(r.step_time_cv, 2),
            NULL if is_null(r.peak_memory_bytes) else f"{r.peak_memory_bytes / GIB:.2f}",
            fmt(r.energy_j, ".0f"), fmt(r.tokens_per_joule, ".1f"), fmt(r.sm_clock_mean_mhz, ".0f"),
            throttled, error])
        extra[len(rows) - 1] = micro_lines(frame.loc[[i]])
    body = table(rows)
    for index, line in enumerate(body):
        lines.append(line)
        lines += extra.get(index, [])

    refused = frame[frame.status == "invalid"]
    n_runs, n_ok = len(frame) - len(refused), int((frame.status == "ok").sum())
    if len(refused):
        lines.append(f"refused before starting ({len(refused)}: recorded as `invalid`, not run):")
        for r in refused.itertuples():
            what = " ".join(fmt(v) for v in (r.model, r.strategy, r.precision))
            lines.append(f"  {r.step}/{r.workload} {what}: {' '.join(str(r.error).split())}")
    for step, wanted in expect.items():
        found = int((frame.step == step).sum())  # refused points leave a folder (their record) too
        if found < wanted:
            lines.append(f"{step}: {wanted - found} of its {wanted} planned runs never started "
                         "(no folder: the step ended first)")
            n_runs += wanted - found
    if any(cell.endswith("%!") for row in rows for cell in row):
        lines.append("!: above 100% of a ceiling, a measurement error rather than a result "
                     "(a wrong peak, or a GEMM ceiling measured on shapes too small)")
    if steps:
        lines.append("steps: " + "; ".join(describe_step(s, frame) for s in steps))
        if any(s.partition("=")[2].split(":")[0] == "1" for s in steps):
            lines.append("exit 1: a run of the sweep folder so far is not ok (this step's or an earlier "
                         "step's, a refused point too: the steps share one folder); the counts are the step's own")
    if wall is not None:
        lines.append(f"wall time: {wall:.0f} s")
    lines.append(f"GPU CHECK: {n_ok}/{n_runs} runs ok"
                 + (f", {len(refused)} refused before starting" if len(refused) else ""))
    return "\n".join(lines) + "\n"


def micro_lines(run) -> List[str]:
    """Under a gemm run: its best TFLOP/s per dtype; under an allreduce run: its largest algbw."""
    from suite.report.analysis import measured_ceilings

    mine = measured_ceilings(run)  # run: a one-row frame
    if mine.empty:
        return []
    if "dtype" in mine and (mine.kind == "gemm").any():
        best = mine[mine.kind == "gemm"].sort_values("tflops").groupby("dtype").tail(1)
        return ["    GEMM ceiling: " + ", ".join(
            f"{b.dtype} {num(b.tflops)} TFLOP/s (n={b.n:.0f})" for b in best.sort_values("dtype").itertuples())]
    if "algbw_gbps" in mine and (mine.kind == "collective").any():
        best = mine[mine.kind == "collective"].sort_values("algbw_gbps").groupby("op").tail(1)
        return ["    largest algbw: " + ", ".join(
            f"{b.op} {num(b.algbw_gbps)} GB/s ({human_bytes(b.bytes)})" for b in best.sort_values("op").itertuples())]
    return []


def describe_step(spec: str, frame=None) -> str:
    """`NAME exit RC in S s of LIMIT s`, and with the sweep's frame the step's own runs by status
    (`: 1 ok, 1 refused`; refused = the plan's `invalid`)."""
    name, _, rest = spec.partition("=")
    rc, seconds, limit = (rest.split(":") + ["", "", ""])[:3]
    if rc == "skipped":
        return f"{name} skipped (no time left)"
    what = {"0": "exit 0", "124": "exit 124 (timed out)", "137": "exit 137 (killed at time-out)"}.get(rc, f"exit {rc}")
    text = f"{name} {what} in {seconds} s of {limit} s"
    if frame is not None and "step" in frame:
        counts = frame[frame.step == name].status.fillna("no status").replace({"invalid": "refused"}).value_counts()
        order = sorted(counts.index, key=lambda k: (k != "ok", k != "refused", k))
        text += ": " + (", ".join(f"{counts[k]} {k}" for k in order) if len(counts) else "no runs")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, help="also write the summary here")
    parser.add_argument("--expect", action="append", default=[], metavar="STEP=N")
    parser.add_argument("--step", action="append", default=[], metavar="STEP=RC:SECONDS:LIMIT")
    parser.add_argument("--wall", type=float)
    parser.add_argument("--written-for", metavar="TEXT", help="the GPU the check's sizes are chosen for")
    parser.add_argument("--device", metavar="TEXT", help="the GPU it ran on")
    parser.add_argument("--host", metavar="TEXT", help="whether the hostname resolves")
    parser.add_argument("--close", type=Path, metavar="SWEEP", help="record runs that left no record")
    parser.add_argument("--status", default="timeout")
    parser.add_argument("--why", default="the run left no record")
    args = parser.parse_args(argv)
    if args.close is not None:
        for run_dir in close_unrecorded(args.close, args.status, args.why):
            print(f"   recorded {run_dir.name}: {args.status} ({args.why})")
        return 0
    if args.sweep is None:
        parser.error("give a sweep folder (or --close SWEEP)")
    expect = {k: int(v) for k, _, v in (e.partition("=") for e in args.expect)}
    text = summarize(args.sweep, expect, args.step, args.wall, args.written_for, args.device, args.host)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
