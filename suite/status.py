"""`python -m suite.status SWEEP_DIR`: what a sweep is doing now. Counts (pending, running, ok,
and the other statuses), each run's state from its record or, without one, from the scheduler
(Slurm's accounting; a local run's process), its elapsed time, and an estimate of the time left.
The sweep driver shows the same counts while it waits (`Progress`). Reads only files the
launcher and the runs write (sweep.json, submission.json, result.json); changes nothing."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from suite import results

SWEEP_FILE = "sweep.json"  # the launcher's list of the sweep's runs, written before any starts
PENDING, RUNNING, LOST = "pending", "running", "ended without a record"


@dataclass
class RunState:
    name: str
    state: str                  # pending, running, a record status, or LOST
    elapsed_s: Optional[float]  # running: so far; finished: its wall time; pending: None
    detail: str = ""            # the job id, the scheduler's state, the record's error


def redact_override(override: str) -> str:
    """One command-line override as the suite writes and prints it: the value of a key whose
    name looks like a credential (suite.results.redact: TOKEN, KEY, SECRET, ...) as
    <redacted>, user:password@ in a URL masked; a reference (${oc.env:NAME}) is kept."""
    key, sep, value = override.partition("=")
    if not sep or "${" in value:
        return override
    name = key.lstrip("+~").rsplit(".", 1)[-1]
    redacted = results.redact(name, value)
    return f"{key}={redacted}" if redacted != value else override


def redact_overrides(overrides: Sequence[str]) -> List[str]:
    return [redact_override(o) for o in overrides]


def typed_secrets(overrides: Sequence[str]) -> List[str]:
    """The keys of overrides that carry a credential as typed (not as a reference): a value of
    a credential's name, or a URL's user:password@."""
    return [o.partition("=")[0].lstrip("+~") for o in overrides if redact_override(o) != o]


def redact_label(label: str) -> str:
    """A label of space-separated overrides (PlannedRun.label), redacted as redact_override."""
    return " ".join(redact_override(o) for o in label.split(" "))


def write_sweep_file(sweep_dir: Path, runs: Sequence[dict], scheduler: str) -> Path:
    """[{"name": run folder, "label": overrides}] of every run the sweep will have a record for;
    the labels' credentials redacted (redact_label), whoever passes them."""
    path = Path(sweep_dir) / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = [{**run, "label": redact_label(run["label"])} if isinstance(run.get("label"), str) else run
            for run in runs]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"scheduler": scheduler, "written_at": results.now_iso(), "runs": runs}, indent=1))
    os.replace(tmp, path)
    return path


def _seconds(start: Optional[str], end: Optional[str]) -> Optional[float]:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def slurm_elapsed_s(text: str) -> Optional[float]:
    """sacct's Elapsed ('[D-]HH:MM:SS' or 'MM:SS') in seconds."""
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None
    while len(parts) < 3:
        parts.insert(0, 0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def state_of(name: str, record: Optional[dict], submission: Optional[dict], job: Optional[tuple],
             now: str) -> RunState:
    """One run's state: its record's status if it has one; else, from the scheduler's word
    `job` = (state, elapsed_s) (Slurm: PENDING, RUNNING, ...; local: RUNNING or ENDED), running,
    pending, or LOST (its job ended and nobody wrote its record yet); pending when not submitted."""
    if record is not None:
        wall = (record.get("metrics") or {}).get("run_wall_s")
        return RunState(name, record["status"], wall if wall is not None else
                        _seconds(record.get("started_at"), record.get("finished_at")),
                        (record.get("error") or "")[:120])
    if submission is None or not submission.get("job_id"):
        return RunState(name, PENDING, None, "not submitted yet")
    job_id = submission["job_id"]
    if job is None:
        return RunState(name, RUNNING, _seconds(submission.get("submitted_at"), now),
                        f"job {job_id}: the scheduler did not say (state assumed from the submission)")
    state, elapsed = job
    if state in ("PENDING", "REQUEUED", "CONFIGURING", "REQUEUE_HOLD"):
        return RunState(name, PENDING, None, f"job {job_id} {state}")
    if state in ("RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"):
        return RunState(name, RUNNING, elapsed, f"job {job_id} {state}")
    return RunState(name, LOST, elapsed, f"job {job_id} {state}: `python -m suite.report` writes its record")


def counts(states: Sequence[RunState]) -> Dict[str, int]:
    """Runs per state: pending and running first, then ok, then the other statuses by name."""
    out: Dict[str, int] = {PENDING: 0, RUNNING: 0, "ok": 0}
    for state in sorted({s.state for s in states} - set(out)):
        out[state] = 0
    for s in states:
        out[s.state] += 1
    return out


def time_left_s(states: Sequence[RunState]) -> Optional[float]:
    """The runs still to finish x the mean wall time of the finished ones, over the runs seen
    running at once (at least 1); a running run counts for what it has left of that mean.
    None before any run has finished."""
    done = [s.elapsed_s for s in states if s.state not in (PENDING, RUNNING) and s.elapsed_s]
    if not done:
        return None
    mean = sum(done) / len(done)
    running = [s for s in states if s.state == RUNNING]
    pending = sum(1 for s in states if s.state == PENDING)
    left = pending * mean + sum(max(mean - (s.elapsed_s or 0.0), 0.0) for s in running)
    return left / max(len(running), 1)


def _scheduler_states(waiting: Dict[str, dict]) -> Dict[str, tuple]:
    """(state, elapsed_s) per run name for submitted runs without a record, from the scheduler."""
    out: Dict[str, tuple] = {}
    slurm = {sub["job_id"]: name for name, sub in waiting.items() if sub.get("scheduler") == "slurm"}
    if slurm:
        from suite.schedulers.slurm import sacct_states

        try:
            for job_id, job in sacct_states(list(slurm)).items():
                out[slurm[job_id]] = (job.state, slurm_elapsed_s(job.elapsed))
        except (RuntimeError, OSError):  # no accounting here (a copied folder): say nothing
            pass
    for name, sub in waiting.items():
        if sub.get("scheduler") == "local":  # submitit's local job id is the job's process id
            try:
                os.kill(int(sub["job_id"]), 0)
                out[name] = ("RUNNING", _seconds(sub.get("submitted_at"), results.now_iso()))
            except (ProcessLookupError, ValueError):
                out[name] = ("ENDED", None)
            except PermissionError:  # alive, another user's
                out[name] = ("RUNNING", None)
    return out


def sweep_states(sweep_dir: Path) -> List[RunState]:
    """Every run of the sweep (sweep.json's list, or the run folders of a sweep from before it)."""
    sweep_dir = Path(sweep_dir)
    listed = sweep_dir / SWEEP_FILE
    names = [r["name"] for r in json.loads(listed.read_text())["runs"]] if listed.exists() else []
    # and every run folder with a record or a submission (an invalid point's record, a sweep
    # from before sweep.json)
    names += sorted({p.parent.name for pattern in (results.RESULT_FILE, results.SUBMISSION_FILE)
                     for p in sweep_dir.glob(f"*/{pattern}")} - set(names))
    records, submissions = {}, {}
    for name in names:
        record, sub = sweep_dir / name / results.RESULT_FILE, sweep_dir / name / results.SUBMISSION_FILE
        if record.exists():
            records[name] = results.read_record(record)
        elif sub.exists():
            submissions[name] = json.loads(sub.read_text())
    jobs = _scheduler_states({n: s for n, s in submissions.items() if s.get("job_id")})
    now = results.now_iso()
    return [state_of(n, records.get(n), submissions.get(n), jobs.get(n), now) for n in names]


def counts_line(states: Sequence[RunState]) -> str:
    left = time_left_s(states)
    finished = sum(1 for s in states if s.state not in (PENDING, RUNNING))
    return (f"{finished}/{len(states)} runs finished: "
            + ", ".join(f"{n} {state}" for state, n in counts(states).items())
            + ("; done" if finished == len(states) else
               f"; about {_clock(left)} left" if left is not None else "; time left: after the first run"))


def _clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def table(states: Sequence[RunState]) -> str:
    width = max([len(s.name) for s in states] + [3])
    lines = [f"{'run':<{width}}  {'state':<22}  {'elapsed':>8}  detail"]
    lines += [f"{s.name:<{width}}  {s.state:<22}  {_clock(s.elapsed_s):>8}  {s.detail}" for s in states]
    return "\n".join(lines)


class Progress:
    """While the driver waits: the counts every `every_s` seconds, as a live line on a terminal
    (rich) or as a log line when they changed (not a terminal: CI, a batch job's log)."""

    def __init__(self, sweep_dir: Path, every_s: float = 5.0, stream=None) -> None:
        self.sweep_dir, self.every_s = Path(sweep_dir), every_s
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:  # the counts it ended with, whatever the last poll saw
            print(f"[sweep] {counts_line(sweep_states(self.sweep_dir))}", file=self.stream, flush=True)
        except Exception as error:  # a progress line must never stop the sweep
            print(f"[sweep] progress unavailable: {type(error).__name__}: {error}", file=self.stream, flush=True)

    def _loop(self) -> None:
        live = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            live = Live("", console=Console(file=self.stream), refresh_per_second=2, transient=True)
            live.start()
        last = None
        try:
            while True:
                try:
                    line = counts_line(sweep_states(self.sweep_dir))
                except Exception as exc:  # a progress line must never stop the sweep
                    line = f"progress unavailable: {type(exc).__name__}: {exc}"
                if live is not None:
                    live.update(f"[sweep] {line}")
                elif line.split(";")[0] != last:  # a log line when the counts change
                    print(f"[sweep] {line}", file=self.stream, flush=True)
                    last = line.split(";")[0]
                if self._stop.wait(self.every_s):
                    break
        finally:
            if live is not None:
                live.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.status", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (running or finished)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"sweep_dir {args.sweep_dir} is not a folder")
    states = sweep_states(args.sweep_dir)
    if not states:
        parser.error(f"sweep_dir {args.sweep_dir} holds no runs (no {SWEEP_FILE}, no run folders)")
    print(table(states))
    print()
    print(counts_line(states))
    return 0


if __name__ == "__main__":
    sys.exit(main())
