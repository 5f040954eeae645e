"""Tables and rendering: report.md, report.html (plots embedded), runs.parquet, runs.csv."""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from suite.collect import reconcile  # noqa: E402
from suite.metrics import loss_parity  # noqa: E402
from suite.report.collate import load_sweep  # noqa: E402

MIB = 2 ** 20


@dataclass
class Report:
    frame: pd.DataFrame
    markdown_path: Path
    html_path: Path
    summary_text: str
    all_ok: bool
    unfinished: List[str]


def _number(value, fmt: str) -> str:
    return "—" if value is None or pd.isna(value) else format(value, fmt)


def throughput_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run of one model: the axes, the headline metrics with units, the status."""
    rows = []
    for _, r in frame.iterrows():
        spread = "" if pd.isna(r.step_time_cv) else f" ± {r.step_time_cv * 100:.1f}%"
        rows.append({
            "strategy": r.strategy, "optimizer": r.optimizer, "precision": r.precision,
            "ranks": _number(r.world_size, ".0f"),
            "dp x tp x pp": f"{_number(r.data_parallel, '.0f')} x {_number(r.tensor_parallel, '.0f')}"
                            f" x {_number(r.pipeline_parallel, '.0f')}",
            "micro x accum": f"{_number(r.micro_batch_size, '.0f')} x {_number(r.grad_accum_steps, '.0f')}",
            "recompute": r.activation_checkpointing if isinstance(r.activation_checkpointing, str) else "—",
            "tokens/s/device": _number(r.tokens_per_s_per_device, ",.0f"),
            "TFLOP/s/device": _number(r.tflops_per_device, ".4g"),
            "MFU": "—" if pd.isna(r.mfu) else f"{r.mfu * 100:.1f}%",
            "HFU": "—" if pd.isna(r.hfu) else f"{r.hfu * 100:.1f}%",
            "step median (ms) ± CV": ("—" if pd.isna(r.step_time_median_s)
                                      else f"{r.step_time_median_s * 1e3:.1f}{spread}"),
            "peak memory (MiB)": _number(None if pd.isna(r.peak_memory_bytes) else r.peak_memory_bytes / MIB, ",.0f"),
            "status": r.status,
        })
    return pd.DataFrame(rows)


def best_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The fastest ok configuration per (model, world size), by tokens/s per device."""
    ok = frame[frame.status == "ok"].dropna(subset=["tokens_per_s_per_device"])
    if ok.empty:
        return pd.DataFrame(columns=["model", "ranks", "best configuration", "tokens/s/device"])
    best = ok.loc[ok.groupby(["model", "world_size"])["tokens_per_s_per_device"].idxmax()]
    return pd.DataFrame({
        "model": best.model,
        "ranks": best.world_size.astype(int),
        "best configuration": best.strategy + " / " + best.optimizer + " / " + best.precision,
        "tokens/s/device": best.tokens_per_s_per_device.map(lambda v: f"{v:,.0f}"),
    })


def parity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs in parity mode against the plain data-parallel run (ZeRO 0, no TP/PP/offload, no
    recomputation) of the same model, optimizer, precision, global batch and world size."""
    runs = frame[frame.check_parity.fillna(False).astype(bool)]
    rows = []
    keys = ["model", "optimizer", "precision", "global_batch_size", "world_size"]
    for _, group in runs.groupby(keys, dropna=False):
        plain = group[(group.zero_stage == 0) & (group.tensor_parallel == 1)
                      & (group.pipeline_parallel == 1) & ~group.offload_optimizer.astype(bool)
                      & (group.status == "ok")]
        # recomputation does not change the maths: prefer the run without it, take any
        plain = plain.sort_values("activation_checkpointing", key=lambda c: c != "none", kind="stable")
        reference = json.loads(plain.iloc[0].loss_per_step_json) if len(plain) else None
        for _, r in group.iterrows():
            losses = json.loads(r.loss_per_step_json) if r.status == "ok" else None
            if reference is None or losses is None:
                verdict, diff, tol = ("run failed" if losses is None else "no ddp run"), None, None
            else:
                result = loss_parity(losses, reference, r.precision)
                verdict = "yes" if result["matches"] else "NO"
                diff, tol = result["max_abs_diff"], result["tolerance"]
            rows.append({"model": r.model, "strategy": r.strategy, "optimizer": r.optimizer,
                         "precision": r.precision, "recompute": r.activation_checkpointing,
                         "dp x tp x pp": f"{_number(r.data_parallel, '.0f')} x {_number(r.tensor_parallel, '.0f')}"
                                         f" x {_number(r.pipeline_parallel, '.0f')}",
                         "max |loss - ddp loss|": "—" if diff is None else f"{diff:.2e}",
                         "tolerance": "—" if tol is None else f"{tol:.0e}", "matches": verdict})
    return pd.DataFrame(rows, columns=["model", "strategy", "optimizer", "precision", "recompute", "dp x tp x pp",
                                       "max |loss - ddp loss|", "tolerance", "matches"])


def failures_table(frame: pd.DataFrame) -> pd.DataFrame:
    failed = frame[frame.status != "ok"]
    return pd.DataFrame({"run": failed.run_id, "status": failed.status,
                         "error": failed.error.fillna("").str.slice(0, 400)})


def throughput_plot(frame: pd.DataFrame, model: str) -> bytes:
    ok = frame[(frame.model == model) & (frame.status == "ok")]
    labels = (ok.strategy + " / " + ok.optimizer + " / " + ok.precision + " / "
              + ok.world_size.astype("Int64").astype(str) + " ranks").tolist()
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(labels), 2) + 1.2))
    ax.barh(labels, ok.tokens_per_s_per_device.tolist(), color="#3b75af")
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s per device")
    ax.set_title(f"{model}: throughput per device (ok runs)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _markdown(frame: pd.DataFrame, tables: Dict[str, pd.DataFrame], best: pd.DataFrame,
              failures: pd.DataFrame, header: List[str], parity: pd.DataFrame) -> str:
    parts = ["# Benchmark report", "", *header, ""]
    parts += ["## Best configuration per model and world size", "",
              best.to_markdown(index=False) if not best.empty else "_no successful run_", ""]
    for model, table in tables.items():
        parts += [f"## Throughput: {model}", "", table.to_markdown(index=False), ""]
    if not parity.empty:
        parts += ["## Loss parity against plain data parallel", "", parity.to_markdown(index=False), ""]
    parts += ["## Failed runs", "",
              failures.to_markdown(index=False) if not failures.empty else "_none_", ""]
    parts += ["MFU is model FLOPs utilisation against the device's datasheet peak; it is empty "
              "(—) where no peak is known (any CPU, an unlisted GPU). See README.md, 'Metrics'.", ""]
    return "\n".join(parts)


def _html(tables: Dict[str, pd.DataFrame], plots: Dict[str, bytes], best: pd.DataFrame,
          failures: pd.DataFrame, header: List[str], parity: pd.DataFrame) -> str:
    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, border=0, classes="t", escape=True) if not df.empty else "<p><em>none</em></p>"

    body = ["<h1>Benchmark report</h1>", "<ul>"] + [f"<li>{html.escape(h.lstrip('- '))}</li>" for h in header] + ["</ul>"]
    body += ["<h2>Best configuration per model and world size</h2>", table(best)]
    for model, t in tables.items():
        image = base64.b64encode(plots[model]).decode()
        body += [f"<h2>Throughput: {html.escape(model)}</h2>", table(t),
                 f'<img alt="throughput of {html.escape(model)}" src="data:image/png;base64,{image}">']
    if not parity.empty:
        body += ["<h2>Loss parity against plain data parallel</h2>", table(parity)]
    body += ["<h2>Failed runs</h2>", table(failures)]
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}"
             "table.t{border-collapse:collapse;margin:1em 0}"
             ".t th,.t td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right}"
             ".t th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Benchmark report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def build_report(sweep_dir: Path) -> Report:
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    pending = reconcile(sweep_dir).unfinished  # Slurm runs that ended without a record
    frame = load_sweep(sweep_dir)
    frame.to_parquet(out / "runs.parquet", index=False)
    frame.to_csv(out / "runs.csv", index=False)

    n_ok = int((frame.status == "ok").sum())
    header = [f"- sweep: {sweep_dir.name}", f"- runs: {len(frame)}, ok: {n_ok}, "
              f"failed: {len(frame) - n_ok}"]
    if pending:
        shown = ", ".join(pending[:5]) + (", ..." if len(pending) > 5 else "")
        header.append(f"- not finished yet (pending or running in Slurm): {len(pending)} ({shown})")
    measured = frame.dropna(subset=["env_torch"])
    if len(measured):
        versions = measured.iloc[0]
        header.append(f"- torch {versions.env_torch}, DeepSpeed {versions.env_deepspeed}, "
                      f"device {versions.env_device_name}")
    tables = {m: throughput_table(frame[frame.model == m]) for m in sorted(frame.model.dropna().unique())}
    plots = {m: throughput_plot(frame, m) for m in tables}
    for model, png in plots.items():
        (out / f"throughput_{model}.png").write_bytes(png)
    best, failures, parity = best_table(frame), failures_table(frame), parity_table(frame)
    if not parity.empty:
        compared = parity[parity.matches.isin(["yes", "NO"])]
        mismatched = compared[compared.matches == "NO"]
        header.append(f"- loss parity: {len(compared) - len(mismatched)} of {len(compared)} compared runs "
                      f"match plain data parallel" + (f"; NOT: {', '.join(mismatched.strategy)}" if len(mismatched) else "")
                      + (f"; not compared (no ddp run or the run failed): {len(parity) - len(compared)}"
                         if len(parity) > len(compared) else ""))

    markdown_path, html_path = out / "report.md", out / "report.html"
    markdown_path.write_text(_markdown(frame, tables, best, failures, header, parity))
    html_path.write_text(_html(tables, plots, best, failures, header, parity))
    summary = "\n".join(header) + "\n\n" + "\n\n".join(
        f"{m}\n{t[['strategy', 'optimizer', 'precision', 'ranks', 'tokens/s/device', 'step median (ms) ± CV', 'status']].to_markdown(index=False)}"
        for m, t in tables.items())
    parity_ok = parity.empty or not bool((parity.matches == "NO").any())
    return Report(frame, markdown_path, html_path, summary,
                  all_ok=n_ok == len(frame) and not pending and parity_ok, unfinished=pending)
