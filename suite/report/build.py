"""The report: sections (tables and plots) built once from the runs DataFrame, rendered to
report.md and a stand-alone report.html; runs.parquet/csv beside them; optionally compared
against and appended to a history store."""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from suite.schedulers import unfinished as reconcile_with_schedulers  # noqa: E402
from suite.config import ReportConfig  # noqa: E402
from suite.metrics import implausible, loss_parity  # noqa: E402
from suite.report import analysis, history  # noqa: E402
from suite.report.collate import load_sweep  # noqa: E402

MIB = 2 ** 20
PLOTTED = 30  # most configurations in one throughput or trend plot


@dataclass
class Section:
    title: str
    text: List[str] = field(default_factory=list)
    tables: List[Tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: List[Tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Report:
    frame: pd.DataFrame
    markdown_path: Path
    html_path: Path
    summary_text: str
    all_ok: bool
    unfinished: List[str]
    regressions: pd.DataFrame


# ---- formatting -------------------------------------------------------------------------

def _fmt(fmt: str) -> Callable:
    def apply(value):
        if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
            return "—"
        return format(value, fmt)
    return apply


def _pct(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value * 100:.1f}%"


def _share(value) -> str:
    """A share of a ceiling (MFU, HFU, of GEMM ceiling); above 100% it cannot be true, so it is
    shown as a measurement error, not as a figure."""
    if value is None or pd.isna(value):
        return "—"
    return "error (>100%)" if implausible(value) else f"{value * 100:.1f}%"


def _mib(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value / MIB:,.1f}"


def _show(frame: pd.DataFrame, columns: Dict[str, Tuple[str, Callable]]) -> pd.DataFrame:
    """Select, rename and format columns for display: {column: (heading, formatter)}."""
    return pd.DataFrame({heading: frame[col].map(f) if f else frame[col]
                         for col, (heading, f) in columns.items()})


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


# ---- sections ---------------------------------------------------------------------------

LAYOUT = "dp x tp x pp x sp"


def _layout(r) -> str:
    """Data x tensor x pipeline x sequence-parallel degrees (records before Ulysses: sp 1)."""
    sp = 1 if pd.isna(r.sequence_parallel) else r.sequence_parallel
    return " x ".join(_fmt(".0f")(d) for d in (r.data_parallel, r.tensor_parallel, r.pipeline_parallel, sp))


def throughput_section(configs: pd.DataFrame) -> Section:
    section = Section("Throughput", ["One row per configuration: medians over its repeats. "
                                     "CV = coefficient of variation (step times within a run; "
                                     "tokens/s per device across repeats). MFU/HFU are empty (—) "
                                     "where no datasheet peak is known (any CPU, a GPU not in the "
                                     "peak table); 'of GEMM ceiling' is TFLOP/s per device over the "
                                     "sweep's measured GEMM ceiling for the dtype (workload=gemm "
                                     "runs). A share above 100% cannot be true and reads 'error'. "
                                     "Tokens per joule: tokens trained in the timed steps over the "
                                     "GPUs' energy (NVML) in them; 'throttled': power or heat held "
                                     "the clocks down during the timed steps."])
    for model, group in configs.groupby("model"):
        group = group.sort_values(["world_size", "strategy", "optimizer", "precision"])
        table = _show(group.assign(layout=group.apply(_layout, axis=1)), {
            "strategy": ("strategy", None), "optimizer": ("optimizer", None),
            "precision": ("precision", None), "world_size": ("ranks", _fmt(".0f")),
            "layout": (LAYOUT, None), "micro_batch_size": ("micro", _fmt(".0f")),
            "grad_accum_steps": ("accum", _fmt(".0f")),
            "activation_checkpointing": ("recompute", None),
            "compile": ("compiled", lambda v: "" if pd.isna(v) or not v else "yes"),
            "tokens_per_s_per_device": ("tokens/s/device", _fmt(",.0f")),
            "tflops_per_device": ("TFLOP/s/device", _fmt(".4g")),
            "mfu": ("MFU", _share), "hfu": ("HFU", _share),
            "of_gemm_ceiling": ("of GEMM ceiling", _share),
            "tokens_per_joule": ("tokens/J", _fmt(",.1f")),
            "sm_clock_mean_mhz": ("SM clock (MHz)", _fmt(",.0f")),
            "throttled": ("throttled", lambda v: "" if pd.isna(v) else ("YES" if v else "no")),
            "step_time_median_s": ("step median (s)", _fmt(".4f")),
            "step_time_cv": ("step CV", _pct), "repeats": ("repeats", _fmt(".0f")),
            "repeat_cv": ("repeat CV", _pct), "noisy": ("too noisy", lambda v: "yes" if v else ""),
            "peak_memory_bytes": ("peak memory (MiB)", _mib)})
        section.tables.append((str(model), table))
        group = group.nlargest(PLOTTED, "tokens_per_s_per_device").sort_values(
            ["world_size", "strategy", "optimizer", "precision"])
        fig, ax = plt.subplots(figsize=(8, 0.4 * max(len(group), 2) + 1.2))
        labels = (group.strategy + " / " + group.optimizer + " / " + group.precision + " / "
                  + group.world_size.astype(int).astype(str) + " ranks").tolist()
        ax.barh(labels, group.tokens_per_s_per_device.tolist(), color="#3b75af")
        ax.invert_yaxis()
        ax.set_xlabel("tokens/s per device")
        ax.set_title(f"{model}: throughput per device" + (f" (fastest {PLOTTED})" if len(group) == PLOTTED else ""))
        ax.grid(axis="x", alpha=0.3)
        section.images.append((f"throughput_{model}", _png(fig)))
    return section


def scaling_section(scaling: pd.DataFrame) -> Optional[Section]:
    if scaling.empty:
        return None
    section = Section("Scaling", [
        "Against the smallest measured world size N0 of each (model, strategy, mode). "
        "Weak scaling (per-device micro-batch fixed): speed-up = T(N)/T(N0), efficiency = "
        "(T(N)/N) / (T(N0)/N0), T = tokens/s. Strong scaling (global batch fixed): speed-up = "
        "t(N0)/t(N), efficiency = t(N0)·N0 / (t(N)·N), t = median step time. 100% is ideal."])
    table = _show(scaling, {
        "model": ("model", None), "strategy": ("strategy", None), "mode": ("mode", None),
        "world_size": ("ranks", _fmt(".0f")), "global_batch_size": ("global batch", _fmt(".0f")),
        "tokens_per_s": ("tokens/s", _fmt(",.0f")), "tokens_per_s_per_device": ("tokens/s/device", _fmt(",.0f")),
        "speedup": ("speed-up", _fmt(".2f")), "efficiency": ("efficiency", _pct),
        "noisy": ("too noisy", lambda v: "yes" if v else "")})
    section.tables.append(("", table))
    for (model, mode), group in scaling.groupby(["model", "mode"]):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        for strategy, lines in group.groupby("strategy"):
            lines = lines.sort_values("world_size")
            left.plot(lines.world_size, lines.tokens_per_s, marker="o", label=strategy)
            base = lines.iloc[0]
            # ideal in both modes: throughput proportional to the world size
            ideal = base.tokens_per_s * lines.world_size / base.world_size
            left.plot(lines.world_size, ideal, linestyle="--", color="grey", alpha=0.6)
            right.plot(lines.world_size, lines.efficiency * 100, marker="o", label=strategy)
        left.set(xlabel="world size", ylabel="tokens/s", title=f"{model}, {mode}: throughput (dashed: ideal)")
        right.axhline(100, linestyle="--", color="grey", alpha=0.6)
        right.set(xlabel="world size", ylabel="efficiency (%)", title=f"{model}, {mode}: efficiency")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        section.images.append((f"scaling_{model}_{mode}", _png(fig)))
    return section


def best_section(best: pd.DataFrame) -> Section:
    table = _show(best, {"model": ("model", None), "world_size": ("ranks", _fmt(".0f")),
                         "configuration": ("best configuration", None),
                         "tokens_per_s_per_device": ("tokens/s/device", _fmt(",.0f")),
                         "memory_headroom_bytes": ("memory headroom (MiB)", _mib),
                         "runner_up": ("runner-up", None), "margin": ("ahead by", _pct)})
    return Section("Best configuration per model and world size",
                   ["Ranked by tokens/s per device; headroom = device memory (CPU: RAM / local "
                    "ranks) - peak memory."], [("", table)])


def model_section(model: pd.DataFrame) -> Section:
    table = _show(model, {
        "model": ("model", None), "strategy": ("strategy", None), "world_size": ("ranks", _fmt(".0f")),
        "model_state_bytes_predicted": ("model states, ZeRO paper (MiB)", _mib),
        "deepspeed_estimate_bytes": ("DeepSpeed estimate (MiB)", _mib),
        "peak_memory_bytes": ("measured peak (MiB)", _mib), "memory_ratio": ("measured/model", _fmt(".2f")),
        "comm_bytes_per_step_predicted": ("comm/step, model (MiB)", _mib),
        "comm_bytes_per_step_counted": ("comm/step, comms logger (MiB)", _mib),
        "comm_ratio": ("logged/model", _fmt(".2f")), "flag": ("flag", None)})
    return Section("Memory and communication: model vs measured", [
        "Model states per device (ZeRO paper): stage 0 (P+G+O)Ψ, 1 (P+G)Ψ+OΨ/N, 2 PΨ+(G+O)Ψ/N, "
        "3 (P+G+O)Ψ/N bytes, with P, G the parameter and gradient bytes, O the optimizer's "
        "(fp32 master copy included in mixed precision), N the ranks sharing the parameters "
        "(data parallel, times the sequence-parallel degree under Ulysses), Ψ the "
        "parameters per rank. DeepSpeed's estimator (stages 2-3) assumes mixed-precision Adam. "
        "Communication per step and rank: 2Ψ(N-1)/N gradient bytes for stages 0-2, 3Ψ(N-1)/N for "
        "stage 3, against the bytes DeepSpeed's comms logger counted (runs with "
        "train.profile_comms=true; its latencies are not used). On the CPU the measured peak is "
        "the resident set of the whole process, so memory is not compared there."], [("", table)])


def history_sections(regress: pd.DataFrame, trend: Dict[str, pd.DataFrame]) -> List[Section]:
    sections = []
    table = _show(regress, {
        "model": ("model", None), "strategy": ("strategy", None), "optimizer": ("optimizer", None),
        "precision": ("precision", None), "world_size": ("ranks", _fmt(".0f")),
        "value": ("tokens/s/device", _fmt(",.0f")), "baseline": ("baseline", _fmt(",.0f")),
        "change": ("change", _pct), "allowed_drop": ("allowed drop", _fmt(",.0f")),
        "nights": ("nights", _fmt(".0f")), "verdict": ("verdict", None),
        "what_changed": ("what changed", None)})
    sections.append(Section("Regressions against history", [
        "Baseline: median of the configuration's last nights; noise: 1.4826 x their median "
        "absolute deviation. A regression is a drop below baseline - max(min_drop x baseline, "
        "noise_sigmas x noise), the allowed drop capped at max_allowed_drop x baseline; an "
        "improvement likewise upwards."], [("", table)]))
    trends = Section("History trends", ["Median tokens/s per device per sweep, one line per configuration."])
    for model, table in trend.items():
        # the configurations fastest in the latest sweep: a plot of hundreds of lines says nothing
        table = table[table.iloc[-1].sort_values(ascending=False).index[:PLOTTED]]
        fig, ax = plt.subplots(figsize=(9, 3.8))
        for label in table.columns:
            ax.plot(table.index, table[label], marker="o", label=label)
        ax.set(xlabel="sweep date", ylabel="tokens/s per device", title=f"{model}: history")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        trends.images.append((f"history_{model}", _png(fig)))
    sections.append(trends)
    return sections


def parity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs in parity mode against the plain data-parallel run (ZeRO 0, no TP/PP/SP/offload) of
    the same model, optimizer, precision, global batch and world size."""
    runs = frame[frame.check_parity.fillna(False).astype(bool)]
    rows = []
    keys = ["model", "optimizer", "precision", "global_batch_size", "world_size"]
    for _, group in runs.groupby(keys, dropna=False):
        plain = group[(group.zero_stage == 0) & (group.tensor_parallel == 1)
                      & (group.pipeline_parallel == 1) & (group.sequence_parallel.fillna(1) == 1)
                      & ~group.offload_optimizer.fillna(False).astype(bool)
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
                         LAYOUT: _layout(r),
                         "max |loss - ddp loss|": "—" if diff is None else f"{diff:.2e}",
                         "tolerance": "—" if tol is None else f"{tol:.0e}", "matches": verdict})
    return pd.DataFrame(rows, columns=["model", "strategy", "optimizer", "precision", "recompute",
                                       LAYOUT, "max |loss - ddp loss|", "tolerance", "matches"])


def ceilings_section(ceilings: pd.DataFrame) -> Optional[Section]:
    if ceilings.empty:
        return None
    section = Section("Ceilings: matrix multiply and collectives", [
        "GEMM: 2mnk FLOPs / time for n x n @ n x n, every rank at once; the largest per dtype is "
        "the measured ceiling the GPT runs' MFU is also given against. Collectives (nccl-tests' "
        "definitions): algbw = message bytes / time (the full buffer), busbw = algbw x 2(n-1)/n "
        "for all_reduce and x (n-1)/n for all_gather and reduce_scatter, n ranks."])
    if "dtype" in ceilings:
        gemm = ceilings[ceilings.kind == "gemm"]
        if len(gemm):
            section.tables.append(("GEMM", _show(gemm, {
                "device": ("device", None), "dtype": ("dtype", None), "n": ("n", _fmt(".0f")),
                "time_s": ("time (s)", _fmt(".3g")), "tflops": ("TFLOP/s per device", _fmt(".4g"))})))
    if "op" in ceilings:
        coll = ceilings[ceilings.kind == "collective"]
        if len(coll):
            section.tables.append(("Collectives", _show(coll, {
                "op": ("op", None), "world_size": ("ranks", _fmt(".0f")), "bytes": ("bytes", _fmt(",.0f")),
                "time_s": ("time (s)", _fmt(".3g")), "algbw_gbps": ("algbw (GB/s)", _fmt(".3g")),
                "busbw_gbps": ("busbw (GB/s)", _fmt(".3g"))})))
    return section


def failures_section(frame: pd.DataFrame) -> Section:
    failed = frame[frame.status != "ok"]
    table = pd.DataFrame({"run": failed.run_id, "status": failed.status,
                          "error": failed.error.fillna("").str.slice(0, 400)})
    return Section("Failed runs", [] if len(failed) else ["None."], [("", table)] if len(failed) else [])


def environment_section(frame: pd.DataFrame) -> Section:
    columns = ["env_python", "env_torch", "env_deepspeed", "env_cuda", "env_nccl", "env_driver",
               "env_device_name", "env_hostname", "env_git_revision"]
    env = frame.dropna(subset=["env_torch"])[columns].drop_duplicates()
    env.columns = [c.removeprefix("env_") for c in columns]
    return Section("Environment", ["Every distinct environment the runs saw."], [("", env.fillna("—"))])


# ---- rendering --------------------------------------------------------------------------

def _markdown(sections: List[Section], header: List[str]) -> str:
    parts = ["# Benchmark report", "", *header, ""]
    for s in sections:
        parts += [f"## {s.title}", ""] + [t + "\n" for t in s.text]
        for caption, table in s.tables:
            if caption:
                parts += [f"### {caption}", ""]
            parts += [table.to_markdown(index=False) if not table.empty else "_none_", ""]
        parts += [f"![{name}]({name}.png)" for name, _ in s.images] + [""]
    return "\n".join(parts)


def _html(sections: List[Section], header: List[str]) -> str:
    body = ["<h1>Benchmark report</h1><ul>"] + [f"<li>{html.escape(h.lstrip('- '))}</li>" for h in header] + ["</ul>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{html.escape(t)}</p>" for t in s.text]
        for caption, table in s.tables:
            if caption:
                body.append(f"<h3>{html.escape(caption)}</h3>")
            body.append(table.to_html(index=False, border=0, classes="t", na_rep="—")
                        if not table.empty else "<p><em>none</em></p>")
        body += [f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                 for name, png in s.images]
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:90em;color:#222}"
             "table.t{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
             ".t th,.t td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
             "table.t{display:block;overflow-x:auto;max-width:100%}"
             ".t th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}"
             "h2{border-bottom:2px solid #3b75af;padding-bottom:.2em;margin-top:2em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Benchmark report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def build_report(sweep_dir: Path, options: Optional[ReportConfig] = None) -> Report:
    options = options or ReportConfig()
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    pending = reconcile_with_schedulers(sweep_dir)  # runs that ended without a record get one
    frame = load_sweep(sweep_dir)
    frame.to_parquet(out / "runs.parquet", index=False)
    frame.to_csv(out / "runs.csv", index=False)

    ceilings = analysis.measured_ceilings(frame)
    gpt = frame[frame.workload == "gpt"]
    configs = analysis.aggregate_repeats(gpt, options.max_cv)
    configs["of_gemm_ceiling"] = analysis.of_gemm_ceiling(configs, ceilings)
    configs["measurement_error"] = analysis.measurement_errors(configs)
    scaling = analysis.scaling_table(configs)
    best = analysis.best_configurations(configs)
    parity = parity_table(gpt)
    regress, trend = pd.DataFrame(columns=analysis.REGRESSION_COLUMNS), {}
    if options.history_dir:
        history.append(Path(options.history_dir), frame)  # regressions skip the sweep's own rows
        ok = history.load(Path(options.history_dir), history.COLUMNS, ok_only=True)
        regress = analysis.regressions(configs, ok, window=options.window, min_drop=options.min_drop,
                                       noise_sigmas=options.noise_sigmas,
                                       max_allowed_drop=options.max_allowed_drop)
        trend = analysis.trends(ok)

    n_ok = int((frame.status == "ok").sum())
    header = [f"- sweep: {sweep_dir.name}",
              f"- runs: {len(frame)}, ok: {n_ok}, failed: {len(frame) - n_ok}"]
    if pending:
        shown = ", ".join(pending[:5]) + (", ..." if len(pending) > 5 else "")
        header.append(f"- not finished yet (pending or running in Slurm): {len(pending)} ({shown})")
    if options.history_dir:
        n_reg = int((regress.verdict == "regression").sum())
        n_imp = int((regress.verdict == "improvement").sum())
        header.append(f"- against history ({options.history_dir}): {n_reg} regressions, "
                      f"{n_imp} improvements, {len(regress)} configurations compared")
    if configs.noisy.any():
        header.append(f"- too noisy to compare (repeat CV > {options.max_cv:.0%}): "
                      f"{int(configs.noisy.sum())} configurations")
    if not parity.empty:
        compared = parity[parity.matches.isin(["yes", "NO"])]
        mismatched = compared[compared.matches == "NO"]
        header.append(f"- loss parity: {len(compared) - len(mismatched)} of {len(compared)} compared runs "
                      f"match plain data parallel" + (f"; NOT: {', '.join(mismatched.strategy)}" if len(mismatched) else "")
                      + (f"; not compared (no ddp run or the run failed): {len(parity) - len(compared)}"
                         if len(parity) > len(compared) else ""))
    errors = configs[configs.measurement_error.fillna("") != ""] if "measurement_error" in configs else configs.iloc[:0]
    if len(errors):
        header.append("- measurement error: a share of a ceiling above 100% (shown as 'error', not "
                      "a result) in " + "; ".join(f"{r.strategy}/{r.optimizer} ({r.measurement_error})"
                                                  for r in errors.itertuples()))
    unknown = analysis.unknown_gpus(frame)
    if unknown:
        header.append(f"- warning: GPU(s) not in the peak table, MFU left empty: {', '.join(unknown)} "
                      "(suite/metrics.py DEVICE_NAMES)")
    throttled = configs[configs.throttled.fillna(False).astype(bool)] if "throttled" in configs else configs.iloc[:0]
    if len(throttled):
        header.append(f"- clocks throttled (power or heat) during the timed steps of {len(throttled)} "
                      "configuration(s): " + ", ".join(f"{r.strategy}/{r.optimizer}" for r in throttled.itertuples()))
    measured = frame.dropna(subset=["env_torch"])
    if len(measured):
        v = measured.iloc[0]
        header.append(f"- torch {v.env_torch}, DeepSpeed {v.env_deepspeed}, device {v.env_device_name}")

    sections = [best_section(best)]
    if options.history_dir:
        sections += history_sections(regress, trend)
    sections.append(throughput_section(configs))
    sections += [s for s in [scaling_section(scaling), ceilings_section(ceilings)] if s is not None]
    sections.append(model_section(analysis.model_vs_measured(configs, options.memory_ratio_bounds)))
    if not parity.empty:
        sections.append(Section("Loss parity against plain data parallel", [
            "Per-step losses (warm-up included) against the plain data-parallel run of the same "
            "model, optimizer, precision, global batch and world size; tolerance per precision."],
            [("", parity)]))
    sections += [failures_section(frame), environment_section(frame)]
    for s in sections:
        for name, png in s.images:
            (out / f"{name}.png").write_bytes(png)

    markdown_path, html_path = out / "report.md", out / "report.html"
    markdown_path.write_text(_markdown(sections, header))
    html_path.write_text(_html(sections, header))
    summary = "\n".join(header) + "\n\n" + "\n\n".join(
        f"{caption}\n{table.iloc[:, :11].to_markdown(index=False)}" for caption, table in sections[
            [s.title for s in sections].index("Throughput")].tables)
    parity_ok = parity.empty or not bool((parity.matches == "NO").any())
    regression_ok = not (options.fail_on_regression and (regress.verdict == "regression").any())
    return Report(frame, markdown_path, html_path, summary,
                  all_ok=n_ok == len(frame) and not pending and parity_ok and regression_ok,
                  unfinished=pending, regressions=regress)
