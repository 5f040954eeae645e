"""`python -m suite.rerun RUN_DIR [--out DIR]`, started by torchrun: run one run of a sweep
again by hand, outside the sweep, exactly as planned (its submission.json: the config and the
plan, the DeepSpeed or torch config included). Each run folder's rerun.sh holds the command;
the new record goes to RUN_DIR/rerun/result.json and rank 0 prints how its per-step losses
compare with the original run's (docs/reproduce.md)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from suite import results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.rerun", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder of a sweep (it has submission.json)")
    parser.add_argument("--out", type=Path, default=None, help="where the new record goes "
                        "(default: RUN_DIR/rerun)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    source = run_dir / results.SUBMISSION_FILE
    if not source.exists():
        parser.error(f"{source} is missing: RUN_DIR must be a run folder of a sweep")
    if "RANK" not in os.environ:
        parser.error("start it with torchrun (the command in RUN_DIR/rerun.sh)")
    from suite.rank import run_rank, torchrun_env

    dist = torchrun_env()
    out = (args.out or run_dir / "rerun").resolve()
    out.mkdir(parents=True, exist_ok=True)
    # every rank writes the same file atomically, so none reads it half-written or missing
    tmp = out / f".{results.SUBMISSION_FILE}.{dist['rank']}.tmp"
    tmp.write_text(source.read_text())
    os.replace(tmp, out / results.SUBMISSION_FILE)
    submission = json.loads(source.read_text())
    record = run_rank(submission["config"], out, sweep_id=f"rerun of {submission['run_id']}", dist=dist)
    if record is None:  # not rank 0
        return 0
    print(f"Record: {out / results.RESULT_FILE} (status {record['status']})")
    original = run_dir / results.RESULT_FILE
    if original.exists():
        before = (results.read_record(original).get("metrics") or {}).get("loss_per_step")
        after = (record.get("metrics") or {}).get("loss_per_step")
        if before and after and len(before) == len(after):
            diff = max(abs(a - b) for a, b in zip(before, after))
            print(f"Per-step losses against the original run: max abs difference {diff:.3g}")
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
