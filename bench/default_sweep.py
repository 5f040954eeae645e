"""The default sweep from command to report (`python -m suite.sweep -m`), with DeepSpeed's
C++ ops already cached. `python bench/default_sweep.py [overrides...]`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    overrides = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "suite.sweep", "-m", *overrides], cwd=REPO,
                              env={**os.environ, "SUITE_RESULTS_DIR": tmp},
                              capture_output=True, text=True, timeout=1200)
        seconds = time.perf_counter() - start
        runs = len(list(Path(tmp).glob("*/*/result.json")))
    figures = {"overrides": " ".join(overrides) or "(default)", "seconds": seconds, "runs": runs,
               "exit_status": done.returncode}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
