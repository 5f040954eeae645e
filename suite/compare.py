"""`python -m suite.compare BASE NEW`: an A/B comparison of two sweep folders (an upgrade, a
config change): per configuration matched by its configuration key, the change in tokens/s per
device with a bootstrap confidence interval and a verdict (faster, slower, no detectable
change), and what differs between the two environments. Writes compare.md, compare.html,
compare.csv and a plot to --out (default NEW/compare/); exits 1 with --fail-on-slower when a
configuration got slower. The maths: suite/report/compare.py; docs/report.md, "A/B comparison"."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from suite.report import compare as ab
from suite.report.collate import load_sweep
from suite.report.render import Section, fmt, html_page, markdown, png, show


def plot(table: pd.DataFrame) -> bytes:
    shown = table.dropna(subset=["low"]).iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.2))
    colour = shown.verdict.map({ab.FASTER: "#2e8b57", ab.SLOWER: "#c0392b"}).fillna("#3b75af")
    y = range(len(shown))
    ax.errorbar(shown.change * 100, list(y), xerr=[(shown.change - shown.low) * 100, (shown.high - shown.change) * 100],
                fmt="none", ecolor="#888", capsize=3)
    ax.scatter(shown.change * 100, list(y), c=list(colour), zorder=3)
    ax.axvline(0, color="#222", linewidth=0.8)
    ax.set_yticks(list(y), list(shown.label))
    ax.set_xlabel("change in tokens/s per device, NEW vs BASE (%), with its interval")
    return png(fig)


def sections(table: pd.DataFrame, only_base, only_new, base: Path, new: Path, level: float,
             min_change: float, env: str) -> tuple[list, list]:
    header = [f"- BASE: {base}", f"- NEW: {new}", f"- {ab.summary_line(table)}",
              f"- environment: {env or 'no difference'}"]
    text = [f"Per configuration (matched by configuration key): tokens/s per device, the change "
            f"NEW / BASE - 1 and its {level:.0%} bootstrap interval (repeats and each run's timed steps "
            f"resampled). Faster or slower: at least two runs on each side, the whole interval on one "
            f"side of zero and the change at least {min_change:.0%}; else no detectable change. With one "
            f"run on a side the interval sees only that run's step-to-step noise, not the run-to-run "
            f"noise that dominates on a shared machine, and no verdict is given: run both sweeps with "
            f"submit.repeats=2 or more."]
    shown = show(table, {"label": ("configuration", None), "base_runs": ("BASE runs", fmt(".0f")),
                         "new_runs": ("NEW runs", fmt(".0f")),
                         "base_tokens_per_s_per_device": ("BASE tokens/s/device", fmt(",.0f")),
                         "new_tokens_per_s_per_device": ("NEW tokens/s/device", fmt(",.0f")),
                         "change": ("change", lambda v: "—" if pd.isna(v) else f"{v * 100:+.1f}%"),
                         "verdict": ("verdict", None), "noise_seen": ("noise seen", None),
                         "what_differs": ("what differs", None)})
    shown.insert(6, "interval", [ab.interval_text(lo, hi) for lo, hi in zip(table.low, table.high)])
    result = Section("Change per configuration", text, [("", shown)])
    if table.low.notna().any():
        result.images.append(("compare_change", plot(table)))
    out = [result]
    if only_base or only_new:
        out.append(Section("Not compared", [f"Only in BASE: {', '.join(only_base) or 'none'}.",
                                            f"Only in NEW: {', '.join(only_new) or 'none'}."]))
    return out, header


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the BASE sweep folder")
    parser.add_argument("new", type=Path, help="the NEW sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default NEW/compare)")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--min-change", type=float, default=0.02,
                        help="smallest relative change called faster or slower")
    parser.add_argument("--draws", type=int, default=4000, help="bootstrap draws")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (the same seed, the same interval)")
    parser.add_argument("--fail-on-slower", action="store_true", help="exit 1 when a configuration got slower")
    args = parser.parse_args(argv)
    for name in ("base", "new"):
        if not getattr(args, name).is_dir():
            parser.error(f"{name.upper()} {getattr(args, name)} is not a folder")
    if not 0 < args.level < 1:
        parser.error(f"--level {args.level} must be in (0, 1)")
    if not 0 <= args.min_change < 1:
        parser.error(f"--min-change {args.min_change} must be a fraction in [0, 1)")
    if args.draws < 100:
        parser.error(f"--draws {args.draws} must be >= 100")
    base, new = load_sweep(args.base), load_sweep(args.new)
    table, only_base, only_new = ab.compare(base, new, min_change=args.min_change, level=args.level,
                                            draws=args.draws, seed=args.seed)
    shown, header = sections(table, only_base, only_new, args.base, args.new, args.level, args.min_change,
                             ab.environments(base, new))
    out = args.out or args.new / "compare"
    out.mkdir(parents=True, exist_ok=True)
    for s in shown:
        for name, image in s.images:
            (out / f"{name}.png").write_bytes(image)
    (out / "compare.md").write_text(markdown(shown, header, title="A/B comparison"))
    (out / "compare.html").write_text(html_page(shown, header, title="A/B comparison"))
    table.to_csv(out / "compare.csv", index=False)
    print("\n".join(header) + "\n")
    print(shown[0].tables[0][1].iloc[:, :9].to_markdown(index=False) if len(table) else "nothing to compare")
    print(f"\nComparison: {out / 'compare.md'}\n            {out / 'compare.html'}")
    if table.empty:
        print("no configuration is in both sweeps (or neither has an ok training run)", file=sys.stderr)
        return 1
    return 1 if args.fail_on_slower and ab.any_slower(table) else 0


if __name__ == "__main__":
    sys.exit(main())
