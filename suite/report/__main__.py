"""`python -m suite.report SWEEP_DIR`: (re)build SWEEP_DIR/report/ from the run records."""
import argparse
import sys
from pathlib import Path

from suite.report import build_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (holds one folder per run)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"sweep_dir {args.sweep_dir} is not a folder")
    report = build_report(args.sweep_dir)
    print(report.summary_text)
    print(f"\nReport: {report.markdown_path}\n        {report.html_path}")
    return 0 if report.all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
