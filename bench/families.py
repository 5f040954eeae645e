"""The two model families side by side in every CPU layout, from ONE sweep (the parity
experiment for the tiny GPT and the tiny Llama, one command): tokens/s per device of each, their
ratio, and each run's largest loss difference from its family's plain data-parallel run.

    python bench/families.py                 # runs the sweep first (about 6 minutes on 2 cores)
    python bench/families.py --sweep DIR     # reads a sweep folder that has both families

The tiny models are about the same size (170k and 164k parameters); on the CPU their
throughput mostly shows per-step overheads of each layout, not the models' kernels."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from suite.report.analysis import parity_table  # noqa: E402
from suite.report.collate import load_sweep  # noqa: E402

COMMAND = [sys.executable, "-m", "suite.sweep", "-m", "experiment=parity", "model=tiny,llama_tiny"]


def run_sweep() -> Path:
    results = Path(tempfile.mkdtemp(prefix="families-"))
    print("$", " ".join(COMMAND[1:]), flush=True)
    subprocess.run(COMMAND, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "SUITE_RESULTS_DIR": str(results)})
    [sweep] = [p for p in results.iterdir() if p.is_dir()]
    return sweep


def table(sweep: Path) -> str:
    frame = load_sweep(sweep)
    ok = frame[frame.status == "ok"]
    speed = ok.pivot_table(index="strategy", columns="model", values="tokens_per_s_per_device")
    parity = parity_table(frame).pivot_table(index="strategy", columns="model", values="max_abs_diff")
    lines = ["| layout | GPT tokens/s/device | Llama tokens/s/device | Llama / GPT | GPT max loss diff | Llama max loss diff |",
             "|---|---:|---:|---:|---:|---:|"]
    for strategy in speed.index:
        gpt, llama = speed.loc[strategy, "tiny"], speed.loc[strategy, "llama_tiny"]
        lines.append(f"| {strategy} | {gpt:,.0f} | {llama:,.0f} | {llama / gpt:.2f} | "
                     f"{parity.loc[strategy, 'tiny']:.2e} | {parity.loc[strategy, 'llama_tiny']:.2e} |")
    failed = frame[frame.status != "ok"]
    if len(failed):
        lines.append(f"\nfailed runs: {len(failed)}: " + ", ".join(f"{r.model}/{r.strategy}: {r.status}"
                                                             for r in failed.itertuples()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, help="a sweep folder with both families (default: run one)")
    args = parser.parse_args()
    sweep = args.sweep or run_sweep()
    print(f"sweep: {sweep}\n")
    print(table(sweep))


if __name__ == "__main__":
    main()
