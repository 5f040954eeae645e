"""Rendering: formatting of values, the Markdown and the stand-alone HTML page, and plots as
PNG. Section content comes from suite/report/sections.py; nothing here computes a figure."""
from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from suite.metric_registry import BY_NAME  # noqa: E402
from suite.metrics import implausible  # noqa: E402

MIB = 2 ** 20


@dataclass
class Section:
    title: str
    text: List[str] = field(default_factory=list)
    tables: List[Tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: List[Tuple[str, bytes]] = field(default_factory=list)
    #: tables a reader looks up rather than reads: Markdown shows them after the tables, HTML
    #: in a collapsed <details> block
    details: List[Tuple[str, pd.DataFrame]] = field(default_factory=list)


def fmt(fmt: str) -> Callable:
    def apply(value):
        if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
            return "—"
        return format(value, fmt)
    return apply


def pct(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value * 100:.1f}%"


def share(value) -> str:
    """A share of a ceiling (MFU, HFU, of GEMM ceiling); above 100% it cannot be true, so it is
    shown as a measurement error, not as a figure."""
    if value is None or pd.isna(value):
        return "—"
    return "error (>100%)" if implausible(value) else f"{value * 100:.1f}%"


def mib(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value / MIB:,.1f}"


def show(frame: pd.DataFrame, columns: Dict[str, Tuple[str, Callable]]) -> pd.DataFrame:
    """Select, rename and format columns for display: {column: (heading, formatter)}."""
    return pd.DataFrame({heading: frame[col].map(f) if f else frame[col]
                         for col, (heading, f) in columns.items()})


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def metric(name: str) -> Tuple[str, Callable]:
    """(heading, formatter) of a registered metric, as the report shows it."""
    m = BY_NAME[name]
    formatter = {"pct": pct, "share": share, "mib": mib,
                 "flag": lambda v: "" if v is None or pd.isna(v) else ("YES" if v else "no")}.get(m.fmt)
    return m.heading, formatter or fmt(m.fmt)


NUMBER = re.compile(r"^[+-]?[\d,]*\.?\d+(e[+-]?\d+)?%?$")


def markdown_table(table: pd.DataFrame) -> str:
    """A table as Markdown, each cell exactly as formatted (tabulate would read "11,693.4" and
    "409.0" as numbers and write them back as 11693.4 and 409, so that one kind of figure
    would read two ways); a column of figures is aligned right."""
    if table.empty:
        return "_none_"
    def figures(column) -> bool:
        cells = [str(v) for v in column if not _blank(v)]
        return bool(cells) and all(NUMBER.match(c.replace(" ", "")) or c.startswith("[") for c in cells)
    align = ["right" if figures(table[c]) else "left" for c in table.columns]
    return table.to_markdown(index=False, disable_numparse=True, colalign=align)


def _blank(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)) or str(value) in ("", "—")


def markdown(sections: List[Section], header: List[str], title: str = "Benchmark report") -> str:
    parts = [f"# {title}", "", *header, ""]
    for s in sections:
        parts += [f"## {s.title}", ""] + [t + "\n" for t in s.text]
        for caption, table in s.tables + s.details:
            if caption:
                parts += [f"### {caption}", ""]
            parts += [markdown_table(table), ""]
        parts += [f"![{name}]({name}.png)" for name, _ in s.images] + [""]
    return "\n".join(parts)


def _html_table(table: pd.DataFrame) -> str:
    return (table.to_html(index=False, border=0, classes="t", na_rep="—") if not table.empty
            else "<p><em>none</em></p>")


def html_page(sections: List[Section], header: List[str], title: str = "Benchmark report") -> str:
    body = [f"<h1>{html.escape(title)}</h1><ul>"] + [f"<li>{html.escape(h.lstrip('- '))}</li>" for h in header] + ["</ul>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{html.escape(t)}</p>" for t in s.text]
        for caption, table in s.tables:
            if caption:
                body.append(f"<h3>{html.escape(caption)}</h3>")
            body.append(_html_table(table))
        for caption, table in s.details:
            body.append(f"<details><summary>{html.escape(caption or 'Details')}</summary>"
                        f"{_html_table(table)}</details>")
        body += [f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                 for name, png in s.images]
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:90em;color:#222}"
             "table.t{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
             ".t th,.t td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
             "table.t{display:block;overflow-x:auto;max-width:100%}"
             ".t th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}"
             "summary{cursor:pointer;font-weight:600;margin:.5em 0}"
             "h2{border-bottom:2px solid #3b75af;padding-bottom:.2em;margin-top:2em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


