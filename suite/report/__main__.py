"""`python -m suite.report SWEEP_DIR`: (re)build SWEEP_DIR/report/ from the run records
(reconciling Slurm runs that left none), optionally against a history of earlier sweeps. Every
report setting (suite.config.ReportConfig, `report.` on a sweep) is an option of the same name."""
import argparse
import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Dict, List, Tuple

from suite.config import ConfigError, ReportConfig
from suite.report.build import report_sweep

# Settings that are no option, and why
NOT_OPTIONS = {"enabled": "whether a sweep builds its report; this command is the report"}
# Shorter names kept from before the options were derived from the settings
ALIASES = {"history_dir": ["--history"]}


def field_docs(cls) -> Dict[str, str]:
    """Each dataclass field's `#:` comment lines (above it in the source), joined."""
    docs, comment = {}, []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        match = re.match(r"(\w+)\s*:", text)
        if text.startswith("#:"):
            comment.append(text[2:].strip())
        elif match and comment:
            docs[match.group(1)] = " ".join(comment)
            comment = []
        else:
            comment = []
    return docs


def parser() -> argparse.ArgumentParser:
    """The command's options: one per ReportConfig field, its doc comment as help."""
    out = argparse.ArgumentParser(prog="python -m suite.report", description=__doc__)
    out.add_argument("sweep_dir", type=Path, help="a sweep folder (holds one folder per run)")
    defaults, docs = ReportConfig(), field_docs(ReportConfig)
    hints = typing.get_type_hints(ReportConfig)
    for f in dataclasses.fields(ReportConfig):
        if f.name in NOT_OPTIONS:
            continue
        kind, default = hints[f.name], getattr(defaults, f.name)
        names = [f"--{f.name.replace('_', '-')}"] + ALIASES.get(f.name, [])
        text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        if kind is bool:
            out.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) in (list, List):
            [item] = typing.get_args(kind)
            out.add_argument(*names, dest=f.name, type=item, nargs=len(default), default=default,
                             metavar=f.name.upper(), help=text)
        else:  # a number or a string, Optional or not
            item = next(a for a in typing.get_args(kind) or (kind,) if a is not type(None))
            out.add_argument(*names, dest=f.name, type=item, default=default, help=text)
    return out


def parse(argv=None) -> Tuple[Path, ReportConfig]:
    """The sweep folder and the report settings from the command line."""
    command = parser()
    args = vars(command.parse_args(argv))
    sweep_dir = args.pop("sweep_dir")
    if not sweep_dir.is_dir():
        command.error(f"sweep_dir {sweep_dir} is not a folder")
    try:
        return sweep_dir, ReportConfig(**args)
    except ConfigError as exc:  # named after the config field; the flag is its command-line name
        command.error(str(exc))


def main(argv=None) -> int:
    sweep_dir, options = parse(argv)
    report = report_sweep(sweep_dir, options)
    print(report.summary_text)
    print(f"\nReport: {report.markdown_path}\n        {report.html_path}")
    return 0 if report.all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
