"""`python -m suite.report SWEEP_DIR`: (re)build SWEEP_DIR/report/ from the run records
(reconciling Slurm runs that left none), optionally against a history of earlier sweeps."""
import argparse
import sys
from pathlib import Path

from suite.config import ConfigError, ReportConfig
from suite.report.build import report_sweep


def main(argv=None) -> int:
    defaults = ReportConfig()
    parser = argparse.ArgumentParser(prog="python -m suite.report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (holds one folder per run)")
    parser.add_argument("--history", type=Path, default=None,
                        help="history store (Parquet dataset): compare against it, then append")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when a configuration regressed against the history")
    parser.add_argument("--window", type=int, default=defaults.window, help="nights in a baseline")
    parser.add_argument("--min-drop", type=float, default=defaults.min_drop,
                        help="smallest relative drop called a regression")
    parser.add_argument("--noise-sigmas", type=float, default=defaults.noise_sigmas,
                        help="drops within this many robust standard deviations are noise")
    parser.add_argument("--max-allowed-drop", type=float, default=defaults.max_allowed_drop,
                        help="a relative drop beyond this is a regression however noisy the history")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"sweep_dir {args.sweep_dir} is not a folder")
    try:
        options = ReportConfig(history_dir=str(args.history) if args.history else None,
                               fail_on_regression=args.fail_on_regression, window=args.window,
                               min_drop=args.min_drop, noise_sigmas=args.noise_sigmas,
                               max_allowed_drop=args.max_allowed_drop)
    except ConfigError as exc:  # named after the config field; the flag is its command-line name
        parser.error(str(exc))
    report = report_sweep(args.sweep_dir, options)
    print(report.summary_text)
    print(f"\nReport: {report.markdown_path}\n        {report.html_path}")
    return 0 if report.all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
