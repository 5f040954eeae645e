"""The report's sections: the analysis results (suite/report/analysis.py) as display tables
and plots, and the header lines that summarise a sweep."""
from __future__ import annotations

from typing import Dict, List, Optional

import matplotlib.pyplot as plt
import pandas as pd

from suite.metrics import implausible
from suite.report.analysis import TIE, configuration_labels
from suite.report.render import MIB, Section, _blank, fmt, metric, mib, pct, png, share, show

PLOTTED = 30  # most configurations in one throughput or trend plot
LISTED_UNCHANGED = 20  # more configurations than this: the regressions table lists the changed ones


LAYOUT = "dp x tp x pp x sp"
# The registered metrics the throughput table shows, in order (headings and formats: the registry)
THROUGHPUT_METRICS = ("tokens_per_s_per_device", "tflops_per_device", "mfu", "hfu",
                      "tokens_per_joule", "sm_clock_mean_mhz", "throttled", "step_time_median_s",
                      "step_time_cv", "peak_memory_bytes")


def _flag(value) -> str:
    """A verdict column: YES stands out of a column of no."""
    return "YES" if value else "no"


def _layout(r) -> str:
    """Data x tensor x pipeline x sequence-parallel degrees (records before Ulysses: sp 1)."""
    sp = 1 if pd.isna(r.sequence_parallel) else r.sequence_parallel
    return " x ".join(fmt(".0f")(d) for d in (r.data_parallel, r.tensor_parallel, r.pipeline_parallel, sp))


# The order of the throughput table's rows and plots' bars
ORDER = ["world_size", "nodes", "strategy", "optimizer", "precision", "micro_batch_size"]
# The axes the throughput table has a column for (the layout's four in one)
THROUGHPUT_AXES = ("model", "strategy", "optimizer", "precision", "world_size", "nodes", "data_parallel",
                   "tensor_parallel", "pipeline_parallel", "sequence_parallel", "micro_batch_size",
                   "grad_accum_steps", "activation_checkpointing", "compile")


def _with_configuration(columns: Dict[str, tuple], table: pd.DataFrame, after: str) -> Dict[str, tuple]:
    """The display columns with `configuration` (the other axes that vary) after `after`, where
    the table names any."""
    if "configuration" not in table or not table.configuration.fillna("").astype(bool).any():
        return columns
    out = {}
    for name, spec in columns.items():
        out[name] = spec
        if name == after:
            out["configuration"] = ("configuration", None)
    return out


def _bars(labels: List[str], bars: Dict[str, list], xlabel: str, title: str,
          intervals: Optional[tuple] = None) -> bytes:
    """A horizontal bar plot, one row per label (kept apart even if two labels read the same),
    one bar per entry of `bars` in each row; `intervals` = (lows, highs) of the first entry's
    bars, drawn as error bars where known."""
    fig, ax = plt.subplots(figsize=(8, (0.25 + 0.2 * len(bars)) * max(len(labels), 2) + 1.2))
    height = 0.8 / len(bars)
    for k, ((name, values), colour) in enumerate(zip(bars.items(), ("#3b75af", "#999999"))):
        ax.barh([i - 0.4 + height * (k + 0.5) for i in range(len(labels))], values, height=height,
                color=colour, label=name)
        if k == 0 and intervals is not None:
            # an interval that does not hold its bar (a record whose stored figure disagrees
            # with its step times, flagged in the header) is not drawn: never a negative error bar
            known = [i for i, (lo, hi) in enumerate(zip(*intervals))
                     if pd.notna(lo) and pd.notna(hi) and lo <= values[i] <= hi]
            if known:
                ax.errorbar([values[i] for i in known], [i - 0.4 + height * 0.5 for i in known],
                            xerr=[[values[i] - intervals[0][i] for i in known],
                                  [intervals[1][i] - values[i] for i in known]],
                            fmt="none", ecolor="#222222", capsize=3, linewidth=1, label="95% interval")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if len(bars) > 1 or intervals is not None:
        ax.legend(fontsize=8)
    return png(fig)


def _noisy(value, reason=None) -> str:
    """'too noisy': YES and the CV that decided it, or no."""
    if value is None or pd.isna(value):
        return "—"
    return f"YES: {reason}" if value and isinstance(reason, str) and reason else ("YES" if value else "no")


def _yes_no(value) -> str:
    """A configuration's switch (compiled): yes or no; — where the record does not say."""
    return "—" if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)) else (
        "yes" if value else "no")


# The throughput figures people read first (the lead table); the rest is in the details table
LEAD_METRICS = ("tflops_per_device", "mfu", "step_time_cv", "peak_memory_bytes")
DETAIL_METRICS = ("hfu", "tokens_per_joule", "sm_clock_mean_mhz", "throttled", "step_time_median_s")


def throughput_section(configs: pd.DataFrame) -> Section:
    section = Section("Throughput", ["One row per configuration: medians over its repeats. "
                                     "CV = coefficient of variation (step CV: of the step times "
                                     "within a run; repeat CV: of tokens/s per device across "
                                     "repeats); a configuration is too noisy to compare when either "
                                     "exceeds report.max_cv, and the column says which CV decided. "
                                     "MFU is empty (—) where no datasheet peak is known (any CPU, "
                                     "a GPU not in the peak table). The 95% interval of tokens/s "
                                     "per device: a bootstrap over the repeats and each run's "
                                     "timed steps (docs/report.md, 'Noise'). The details table "
                                     "after the lead tables has the rest, a row per configuration: "
                                     "its full layout and batch, HFU, 'of GEMM ceiling' (TFLOP/s "
                                     "per device over the sweep's measured GEMM ceiling for the "
                                     "dtype, workload=gemm runs), tokens per joule (tokens trained "
                                     "in the timed steps over the GPUs' energy, NVML), the SM clock, "
                                     "'throttled' (power or heat held the clocks down during the "
                                     "timed steps), the median step time and the repeats; a column "
                                     "with no value in any row (on the CPU: the GPU figures) is left "
                                     "out. A share above 100% cannot be true and reads 'error'. "
                                     "Beside the throughput plot: MFU (where a peak is known) and "
                                     "the memory model's predicted peak against the measured one "
                                     "(GPUs)."])
    details = []
    for model, group in configs.groupby("model"):
        group = group.sort_values(ORDER)
        others, labels = configuration_labels(group, shown=("model", "strategy"))
        group = group.assign(layout=group.apply(_layout, axis=1), configuration=labels if others else "",
                             label=configuration_labels(group, shown=("model",))[1],
                             tps_interval=[_interval(lo, hi, ",.0f") for lo, hi in zip(
                                 group.get("tokens_per_s_per_device_low", [None] * len(group)),
                                 group.get("tokens_per_s_per_device_high", [None] * len(group)))])
        group = group.assign(too_noisy=[_noisy(v, why) for v, why in zip(
            group.noisy, group.get("noisy_reason", pd.Series([None] * len(group), index=group.index)))])
        table = show(group, _with_configuration({
            "strategy": ("strategy", None),
            "tokens_per_s_per_device": metric("tokens_per_s_per_device"),
            "tps_interval": ("95% interval", None),
            **{name: metric(name) for name in LEAD_METRICS[:3]},
            "too_noisy": ("too noisy", None),
            **{name: metric(name) for name in LEAD_METRICS[3:]}}, group, "strategy"))
        section.tables.append((str(model), table))
        named = configuration_labels(group, shown=("model",))[0]
        details.append(show(group.assign(model=str(model), optimizer=group.optimizer if "optimizer" not in named
                                        else ""), {
            "model": ("model", None), "label": ("configuration", None), "optimizer": ("optimizer", None),
            "precision": ("precision", None), "world_size": ("ranks", fmt(".0f")),
            "nodes": ("nodes", fmt(".0f")), "layout": (LAYOUT, None),
            "micro_batch_size": ("micro", fmt(".0f")), "grad_accum_steps": ("accum", fmt(".0f")),
            "activation_checkpointing": ("recompute", None), "compile": ("compiled", _yes_no),
            **{name: metric(name) for name in DETAIL_METRICS[:1]},
            "of_gemm_ceiling": ("of GEMM ceiling", share),
            **{name: metric(name) for name in DETAIL_METRICS[1:]},
            "repeats": ("repeats", fmt(".0f")), "repeat_cv": ("repeat CV", pct)}))
        group = group.nlargest(PLOTTED, "tokens_per_s_per_device").sort_values(ORDER)
        group = group.assign(label=configuration_labels(group, shown=("model",))[1],
                             tps_interval_low=group.get("tokens_per_s_per_device_low", pd.Series(None, index=group.index)),
                             tps_interval_high=group.get("tokens_per_s_per_device_high", pd.Series(None, index=group.index)))
        fastest = f" (fastest {PLOTTED})" if len(group) == PLOTTED else ""
        section.images.append((f"throughput_{model}", _bars(
            group.label.tolist(), {"tokens/s per device": group.tokens_per_s_per_device.tolist()},
            "tokens/s per device", f"{model}: throughput per device{fastest}",
            (group.tps_interval_low.tolist(), group.tps_interval_high.tolist()))))
        measured = group[group.mfu.notna()]
        mfu = measured[~measured.mfu.map(implausible).astype(bool)]  # above 100%: an error, not a figure
        errors = f" ({len(measured) - len(mfu)} above 100% left out: an error)" if len(mfu) < len(measured) else ""
        if len(mfu):
            section.images.append((f"mfu_{model}", _bars(
                mfu.label.tolist(), {"MFU": (mfu.mfu * 100).tolist()}, "MFU (%)",
                f"{model}: model FLOPs utilisation{fastest}{errors}")))
        else:
            section.text.append(f"No MFU plot for {model}: " + (
                "its MFU figures are above 100%, a measurement error." if len(measured) else
                "MFU needs the device's datasheet peak, and none is known for its runs (a CPU, or a "
                "GPU not in the peak table)."))
        on_gpu = group[group.accelerator.astype("string").fillna("") == "cuda"]
        memory = on_gpu.dropna(subset=["peak_memory_bytes", "memory_predicted_bytes"])
        if len(memory):
            section.images.append((f"memory_{model}", _bars(
                memory.label.tolist(), {"measured peak": (memory.peak_memory_bytes / MIB).tolist(),
                                        "predicted (memory model)": (memory.memory_predicted_bytes / MIB).tolist()},
                "MiB per device", f"{model}: peak memory, measured against the memory model{fastest}")))
        else:
            section.text.append(f"No memory plot for {model}: " + (
                "its runs are on the CPU, where the measured peak is the whole process's resident "
                "set (the runtime included), which the memory model does not predict." if on_gpu.empty
                else "its GPU runs have no measured or no predicted peak."))
    if details:
        table = pd.concat(details, ignore_index=True)
        filled = [c for c in table.columns if not table[c].map(_blank).all()]
        section.details.append(("Details: layout, batch, energy, clocks, repeats", table[filled]))
    return section


def scaling_section(scaling: pd.DataFrame) -> Optional[Section]:
    if scaling.empty:
        return None
    section = Section("Scaling", [
        "Against the smallest measured world size N0 of each study: the runs of one mode equal in "
        "every configuration axis but the device count (ranks, nodes, and what follows from them: "
        "the global batch in weak scaling, the accumulation in strong scaling); 'configuration' "
        "names the axes that tell a model's studies of one strategy apart. "
        "Weak scaling (per-device micro-batch fixed): speed-up = T(N)/T(N0), efficiency = "
        "(T(N)/N) / (T(N0)/N0), T = tokens/s. Strong scaling (global batch fixed): speed-up = "
        "t(N0)/t(N), efficiency = t(N0)·N0 / (t(N)·N), t = median step time. 100% is ideal. "
        "An efficiency's 95% interval: a bootstrap of its runs' rate against N0's (repeats and "
        "timed steps)."])
    scaling = scaling.assign(efficiency_interval=[
        _interval(lo, hi, "pct0") for lo, hi in zip(scaling.efficiency_low, scaling.efficiency_high)],
        too_noisy=[_noisy(v, why) for v, why in zip(scaling.noisy, scaling.get(
            "noisy_reason", pd.Series([None] * len(scaling), index=scaling.index)))])
    table = show(scaling, _with_configuration({
        "model": ("model", None), "strategy": ("strategy", None), "mode": ("mode", None),
        "world_size": ("ranks", fmt(".0f")), "nodes": ("nodes", fmt(".0f")),
        "global_batch_size": ("global batch", fmt(".0f")),
        "tokens_per_s": ("tokens/s", fmt(",.0f")), "tokens_per_s_per_device": ("tokens/s/device", fmt(",.0f")),
        "speedup": ("speed-up", fmt(".2f")), "efficiency": ("efficiency", pct),
        "efficiency_interval": ("95% interval", None),
        "too_noisy": ("too noisy", None)}, scaling, "mode"))
    section.tables.append(("", table))
    for (model, mode), group in scaling.groupby(["model", "mode"]):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        for (strategy, configuration), lines in group.groupby(["strategy", "configuration"], sort=False):
            label = " / ".join(part for part in (strategy, configuration) if part)
            lines = lines.sort_values("world_size")
            left.plot(lines.world_size, lines.tokens_per_s, marker="o", label=label)
            base = lines.iloc[0]
            # ideal in both modes: throughput proportional to the world size
            ideal = base.tokens_per_s * lines.world_size / base.world_size
            left.plot(lines.world_size, ideal, linestyle="--", color="grey", alpha=0.6)
            right.plot(lines.world_size, lines.efficiency * 100, marker="o", label=label)
        left.set(xlabel="world size", ylabel="tokens/s", title=f"{model}, {mode}: throughput (dashed: ideal)")
        right.axhline(100, linestyle="--", color="grey", alpha=0.6)
        right.set(xlabel="world size", ylabel="efficiency (%)", title=f"{model}, {mode}: efficiency")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        section.images.append((f"scaling_{model}_{mode}", png(fig)))
    return section


def _best_named(r) -> str:
    """The best configuration's cell: the fastest configuration, or for a tie no winner."""
    if r.verdict == TIE:
        return f"no clear best: {r.configuration} and {r.runner_up} are within the noise"
    return r.configuration


def best_section(best: pd.DataFrame) -> Section:
    best = best.assign(named=[_best_named(r) for r in best.itertuples()],
                       margin_interval=[_interval(lo, hi, "pct") for lo, hi in zip(best.margin_low, best.margin_high)])
    table = show(best, {"model": ("model", None), "world_size": ("ranks", fmt(".0f")),
                        "named": ("best configuration", None),
                        "tokens_per_s_per_device": ("fastest's tokens/s/device", fmt(",.0f")),
                        "memory_headroom_bytes": ("fastest's memory headroom (MiB)", mib),
                        "runner_up": ("runner-up", None), "margin": ("fastest ahead by", pct),
                        "margin_interval": ("95% interval", None), "verdict": ("verdict", lambda v: v or "—")})
    return Section("Best configuration per model and world size",
                   ["Ranked by tokens/s per device; headroom = device memory (CPU: RAM / local "
                    "ranks) - peak memory. The margin's 95% interval is a bootstrap over both "
                    "configurations' repeats and timed steps; where it reaches zero the two are a "
                    "tie: there is no clear best, neither is the winner (the figures are the "
                    "faster-measured one's), and more repeats (submit.repeats) narrow the interval. "
                    "Without step times there is no interval and no verdict (—)."], [("", table)])


def _interval(low, high, form: str) -> str:
    """'[a, b]' of an interval ('—' without one): a format spec, or pct for shares."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "—"
    if form == "pct":
        return f"[{low * 100:+.1f}%, {high * 100:+.1f}%]"
    if form == "pct0":  # a share, not a change
        return f"[{low * 100:.1f}%, {high * 100:.1f}%]"
    return f"[{format(low, form)}, {format(high, form)}]"


def disagreement_line(disagreeing: pd.DataFrame) -> Optional[str]:
    """The records whose stored tokens/s per device is not what their step times give
    (analysis.step_time_disagreements): named, with both figures; None when there are none."""
    if disagreeing.empty:
        return None
    named = "; ".join(
        f"{r.run_id} (stored {fmt(',.0f')(r.stored)} tokens/s per device, its "
        + (f"{r.steps} step times give {fmt(',.0f')(r.from_steps)}" if pd.notna(r.from_steps)
           else f"{r.steps} step times give no rate") + ")"
        for r in disagreeing.itertuples())
    return (f"- warning: {_count(len(disagreeing), 'record')} whose stored figures disagree with "
            f"their step times (edited by hand, or written by another version?): {named}; the "
            "stored figure is shown without an interval and its step times are not used")


def best_line(best: pd.DataFrame, shown: int = 4) -> Optional[str]:
    """The best configurations in one header line, a tie said plainly ("no clear best: ... are
    within the noise"); None when no margin was judged (no runner-up or no step times)."""
    judged = best.dropna(subset=["verdict"]) if "verdict" in best else best.iloc[:0]
    if judged.empty:
        return None
    parts = []
    for r in judged.itertuples():
        where = f"{r.model} on {_count(int(r.world_size), 'rank')}"
        parts.append(f"no clear best for {where}: {r.configuration} and {r.runner_up} are within the noise"
                     if r.verdict == TIE else
                     f"{where}: {r.configuration}, {pct(r.margin)} ahead of {r.runner_up} beyond the noise")
    more = f"; {len(parts) - shown} more in 'Best configuration'" if len(parts) > shown else ""
    ties = (judged.verdict == TIE).any()
    return ("- best configuration: " + "; ".join(parts[:shown]) + more
            + (" (add submit.repeats to separate a tie)" if ties else ""))


def model_section(model: pd.DataFrame) -> Section:
    table = show(model, _with_configuration({
        "model": ("model", None), "strategy": ("strategy", None), "world_size": ("ranks", fmt(".0f")),
        "model_state_bytes_predicted": ("model states, ZeRO paper (MiB)", mib),
        "deepspeed_estimate_bytes": ("DeepSpeed estimate (MiB)", mib),
        "peak_memory_bytes": ("measured peak (MiB)", mib), "memory_ratio": ("measured/model states", fmt(".2f")),
        "memory_predicted_bytes": ("predicted peak, memory model (MiB)", mib),
        "peak_ratio": ("measured/predicted peak", fmt(".2f")),
        "comm_bytes_per_step_predicted": ("comm/step on the wire, model (MiB)", mib),
        "comm_message_bytes_logged": ("comm/step, comms logger's messages (MiB)", mib),
        "comm_bytes_per_step_counted": ("comm/step on the wire, from the logger (MiB)", mib),
        "comm_ratio": ("on the wire: logged/model", fmt(".2f")), "flag": ("flag", None)}, model, "strategy"))
    # a figure no row has (on the CPU the measured ratios, without train.profile_comms the
    # logger's) is left out
    kept = ("model", "strategy", "ranks", "configuration")
    table = table[[c for c in table.columns if c in kept or not table[c].map(_blank).all()]]
    return Section("Memory and communication: model vs measured", [
        "Model states per device (ZeRO paper): stage 0 (P+G+O)Ψ, 1 (P+G)Ψ+OΨ/N, 2 PΨ+(G+O)Ψ/N, "
        "3 (P+G+O)Ψ/N bytes, with P, G the parameter and gradient bytes, O the optimizer's "
        "(fp32 master copy included in mixed precision), N the ranks sharing the parameters "
        "(data parallel, times the sequence-parallel degree under Ulysses), Ψ the "
        "parameters per rank. DeepSpeed's estimator (stages 2-3) assumes mixed-precision Adam. "
        "The predicted peak is the memory model's (docs/memory.md: model states, activations, "
        "logits and loss, ZeRO/DDP/FSDP buffers; without the allocator allowance), judged against "
        "torch.cuda.max_memory_allocated: a peak above it by more than the allowance is flagged "
        "(the model under-predicts), one below report.memory_ratio_bounds' lower bound too (it "
        "over-predicts). Measured / model states is shown, not judged: a run's activations and "
        "DeepSpeed's buffers are no model states. Communication per step and rank, as bytes on "
        "the wire of a ring: 2Ψ(N-1)/N gradient bytes for stages 0-2, 3Ψ(N-1)/N for stage 3. "
        "DeepSpeed's comms logger (runs with train.profile_comms=true; its latencies are not used) "
        "counts each collective's message instead (an all-gather's is the rank's shard, an "
        "all-reduce's and a reduce-scatter's the whole buffer): the table shows those message "
        "bytes and, compared with the model, the bytes they put on the wire (all_reduce 2(N-1)/N "
        "x the message, reduce-scatter, reduce and broadcast (N-1)/N, all-gather (N-1) x the "
        "shard); outside 0.5-2 is flagged, in data-parallel layouts only (the model has no "
        "tensor, pipeline or sequence-parallel traffic). On the CPU the measured peak is the "
        "resident set of the whole process, so memory is not compared there. A column with no "
        "value in any row (the ratios on the CPU, the logger's without train.profile_comms) is "
        "left out."], [("", table)])


def history_sections(regress: pd.DataFrame, trend: Dict[str, pd.DataFrame], changes: pd.DataFrame,
                     options) -> List[Section]:
    sections = []
    columns = {
        "model": ("model", None), "strategy": ("strategy", None), "optimizer": ("optimizer", None),
        "precision": ("precision", None), "world_size": ("ranks", fmt(".0f")),
        "value": ("tokens/s/device", fmt(",.0f")), "baseline": ("baseline", fmt(",.0f")),
        "change": ("change", pct), "allowed_drop": ("allowed drop", fmt(",.0f")),
        "nights": ("nights", fmt(".0f")), "verdict": ("verdict", None)}
    if "method" in regress:
        columns.update({"median_mad_verdict": ("median/MAD", None), "otava": ("Otava's latest change", None),
                        "method": ("decided by", None)})
    columns["what_changed"] = ("what changed", None)
    # a nightly sweep of hundreds of configurations: the table lists what changed; the unchanged
    # rest are counted here and listed in report/regressions.csv (every row)
    listed = regress if len(regress) <= LISTED_UNCHANGED else regress[regress.verdict != "unchanged"]
    table = show(listed, _with_configuration(columns, listed, "world_size"))
    sections.append(Section("Regressions against history", [
        "Two rules, side by side. Median/MAD: baseline = median of the configuration's last "
        f"{options.window} nights, noise = 1.4826 x their median absolute deviation; a regression "
        "is a drop below baseline - max(min_drop x baseline, noise_sigmas x noise), the allowed "
        "drop capped at max_allowed_drop x baseline; an improvement likewise upwards. Otava "
        "(Apache Otava's E-Divisive with t-tests over the configuration's last "
        f"{options.otava_window + options.window} nights, the most the verdict reads, window "
        f"{options.otava_window}, p < {options.otava_max_pvalue:g}, change > "
        f"{options.otava_min_magnitude:.0%}): a regression when its latest change point is a drop "
        f"that started within the last {options.window} nights. The verdict is "
        f"report.change_method's ({options.change_method}); Otava judges configurations with at "
        f"least {options.otava_min_nights} nights, the median/MAD rule the others. Their error "
        "rates on synthetic histories: bench/RESULTS.md, 'Change-point detection'."]
        + ([f"{_count(len(regress) - len(listed), 'configuration')} unchanged, not listed here "
            "(report/regressions.csv has every configuration's row)."] if len(listed) < len(regress) else []),
        [("", table)]))
    found = changes.dropna(subset=["change"]) if len(changes) else changes
    if len(found):
        sections.append(Section("Change points (Apache Otava)", [
            "Every configuration of this sweep with a change point in its last "
            f"{options.otava_window + options.window} nights: the night its latest change "
            "started, its size (mean after / mean before - 1) and the t-test's p-value."],
            [("", show(found, {"model": ("model", None), "strategy": ("strategy", None),
                               "optimizer": ("optimizer", None), "precision": ("precision", None),
                               "world_size": ("ranks", fmt(".0f")), "nights": ("nights", fmt(".0f")),
                               "change_sweep_date": ("change started", None),
                               "change_sweep_id": ("first sweep after it", None),
                               "nights_since": ("nights ago", fmt(".0f")), "change": ("size", pct),
                               "before": ("before", fmt(",.0f")), "after": ("after", fmt(",.0f")),
                               "pvalue": ("p-value", fmt(".1g"))}))]))
    trends = Section("History trends", ["Median tokens/s per device per sweep, one line per configuration, "
                                        f"over the last {options.otava_window + options.window} nights "
                                        "the history was read for."])
    for model, table in trend.items():
        # the configurations fastest in the latest sweep: a plot of hundreds of lines says nothing
        table = table[table.iloc[-1].sort_values(ascending=False).index[:PLOTTED]]
        fig, ax = plt.subplots(figsize=(9, 3.8))
        for label in table.columns:
            ax.plot(table.index, table[label], marker="o", label=label)
        ax.set(xlabel="sweep date", ylabel="tokens/s per device", title=f"{model}: history")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        trends.images.append((f"history_{model}", png(fig)))
    sections.append(trends)
    return sections


def ceilings_section(ceilings: pd.DataFrame) -> Optional[Section]:
    if ceilings.empty:
        return None
    section = Section("Ceilings: matrix multiply and collectives", [
        "GEMM: 2mnk FLOPs / time for n x n @ n x n, every rank at once; the largest per dtype is "
        "the measured ceiling the GPT runs' MFU is also given against. Collectives (nccl-tests' "
        "definitions): algbw = message bytes / time (the full buffer), busbw = algbw x 2(n-1)/n "
        "for all_reduce and x (n-1)/n for all_gather and reduce_scatter, n ranks. Scope: "
        "intra_node = the ranks of one node (each node's group at once), inter_node = one rank "
        "per node (the k-th rank of every node at once), world = both at once; the two first "
        "split a node's own links from the network's share."])
    if "dtype" in ceilings:
        gemm = ceilings[ceilings.kind == "gemm"]
        if len(gemm):
            section.tables.append(("GEMM", show(gemm, {
                "device": ("device", None), "dtype": ("dtype", None), "n": ("n", fmt(".0f")),
                "time_s": ("time (s)", fmt(".3g")), "tflops": ("TFLOP/s per device", fmt(".4g"))})))
    if "op" in ceilings:
        coll = ceilings[ceilings.kind == "collective"]
        if len(coll):
            if "scope" not in coll:  # records from before scopes: the whole world
                coll = coll.assign(scope="world", ranks=coll.world_size)
            section.tables.append(("Collectives", show(coll.assign(ranks=coll.ranks.fillna(coll.world_size)), {
                "op": ("op", None), "scope": ("scope", None), "ranks": ("ranks", fmt(".0f")),
                "bytes": ("bytes", fmt(",.0f")),
                "time_s": ("time (s)", fmt(".3g")), "algbw_gbps": ("algbw (GB/s)", fmt(".3g")),
                "busbw_gbps": ("busbw (GB/s)", fmt(".3g"))})))
    return section


def stragglers_section(runs: pd.DataFrame, nodes: pd.DataFrame, options,
                       excluded: Optional[pd.DataFrame] = None) -> Optional[Section]:
    excluded = excluded if excluded is not None else pd.DataFrame(columns=["run_id", "strategy", "reason"])
    if runs.empty and excluded.empty:
        return None
    section = Section("Stragglers", [
        "Per training run of more than one rank: the rank whose forward pass is slowest (each "
        "rank's fastest timed step: a straggler is slow at every step, a rank that another "
        "process held back for a few steps is not) against the median of the other ranks. A step's time is the same on every rank, since its collectives wait for "
        "the slowest; the forward pass is where a rank's own speed shows (under ZeRO-3, tensor "
        "and sequence parallelism it holds collectives too, which spread a straggler's delay to "
        "its peers; the pipeline engine's schedule is not split: pipeline runs are listed as not judged). "
        f"Flagged: excess above max({options.straggler_min_excess:.0%}, "
        f"{options.straggler_noise_sigmas:g} x the run's noise: the median over ranks of the "
        "robust spread of their forward times, 1.4826 MAD / median). Per node, over the runs that span "
        "several nodes: the runs it took part in and those in which it held the flagged rank; a "
        "node flagged in more than one run is called slow. A rank is compared with ranks that do "
        "the same work: in every layout judged here (data parallel, ZeRO 0-3, ZeRO-Offload, "
        "tensor and sequence parallel) all ranks run the same forward pass on equal shares."])
    for reason, group in excluded.groupby("reason", sort=False):
        section.text.append(f"Not judged ({_count(len(group), 'run')}: {', '.join(group.run_id)}): {reason}.")
    if runs.empty:
        return section
    section.tables.append(("Runs", show(runs.sort_values(["flagged", "excess"], ascending=False), {
        "run_id": ("run", None), "strategy": ("strategy", None), "world_size": ("ranks", fmt(".0f")),
        "slowest_rank": ("slowest rank", fmt(".0f")), "slowest_host": ("its node", None),
        "slowest_s": ("its fastest forward (s)", fmt(".4f")), "others_median_s": ("others' median (s)", fmt(".4f")),
        "excess": ("excess", pct), "threshold": ("threshold", pct),
        "flagged": ("straggler", _flag)})))
    if nodes.empty:
        return section
    section.tables.append(("Nodes", show(nodes, {
        "host": ("node", None), "runs": ("runs", fmt(".0f")),
        "flagged_runs": ("held the straggler", fmt(".0f")),
        "slow": ("slow node", _flag)})))
    return section


def preflight_section(nodes: pd.DataFrame, together: pd.DataFrame, options) -> Optional[Section]:
    if nodes.empty:
        return None
    section = Section("Preflight: each node against the others", [
        "Each node's own runs (one job per node, placed by name): its GEMM ceiling (the largest "
        "TFLOP/s of any shape and dtype) and the all_reduce bus bandwidth among its own ranks "
        "(the largest over message sizes), medians over its runs, each as a share of the median "
        "of the other nodes. Flagged: a share below 1 - threshold, threshold = "
        f"max({options.preflight_tolerance:.0%}, {options.preflight_noise_sigmas:g} x the "
        "figure's noise: the median over nodes of the coefficient of variation across a node's "
        "repeated runs, or for a node with one run the error of the median of its interleaved "
        "rounds, workload.rounds). Together: runs over several nodes, with "
        "the all_reduce bus bandwidth inside a node and across nodes measured apart."])
    section.tables.append(("Nodes", show(nodes, {
        "host": ("node", None), "runs": ("runs", fmt(".0f")),
        "gemm_tflops": ("GEMM TFLOP/s", fmt(".4g")), "gemm_vs_others": ("GEMM, of the others", pct),
        "busbw_gbps": ("all_reduce busbw (GB/s)", fmt(".3g")),
        "busbw_vs_others": ("busbw, of the others", pct), "threshold": ("threshold", None),
        "flagged": ("flagged", _flag)})))
    if len(together):
        section.tables.append(("Together", show(together, {
            "run_id": ("run", None), "nodes": ("nodes", fmt(".0f")), "world_size": ("ranks", fmt(".0f")),
            "busbw_intra_node_gbps": ("busbw inside a node (GB/s)", fmt(".3g")),
            "busbw_inter_node_gbps": ("busbw across nodes (GB/s)", fmt(".3g"))})))
    return section


def preflight_line(nodes: pd.DataFrame) -> Optional[str]:
    if nodes.empty:
        return None
    flagged = nodes[nodes.flagged.astype(bool)]
    return (f"- preflight: {_count(len(nodes), 'node')} compared; "
            + ("no node below the others" if flagged.empty else
               "below the others: " + ", ".join(
                   f"{r.host} (GEMM {pct(r.gemm_vs_others)}, busbw {pct(r.busbw_vs_others)} of the others' median)"
                   for r in flagged.itertuples())))


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




def parity_section(parity: pd.DataFrame) -> Optional[Section]:
    if parity.empty:
        return None
    parity = parity.assign(layout=parity.apply(_layout, axis=1))
    table = show(parity, _with_configuration({
        "model": ("model", None), "strategy": ("strategy", None), "optimizer": ("optimizer", None),
        "precision": ("precision", None), "activation_checkpointing": ("recompute", None),
        "layout": (LAYOUT, None), "max_abs_diff": ("max |loss - ddp loss|", fmt(".2e")),
        "tolerance": ("tolerance", fmt(".0e")), "matches": ("matches", None)}, parity, "layout"))
    return Section("Loss parity against plain data parallel", [
        "Per-step losses (warm-up included) against the plain data-parallel run of the same "
        "model, optimizer, precision, global batch and world size; tolerance per precision."],
        [("", table)])


def straggler_line(runs: pd.DataFrame, nodes: pd.DataFrame) -> Optional[str]:
    if runs.empty:
        return None
    flagged = runs[runs.flagged]
    if flagged.empty:
        return f"- stragglers: none among {_count(len(runs), 'run')} measured"
    named = sorted({f"rank {int(r.slowest_rank)} on {r.slowest_host}" for r in flagged.itertuples()})
    slow = list(nodes.host[nodes.slow.astype(bool)])  # an empty object column would select columns
    return (f"- stragglers: {len(flagged)} of {_count(len(runs), 'run')} ({'; '.join(named)})"
            + (f"; slow node(s): {', '.join(slow)}" if slow else ""))


def header_lines(sweep_name: str, frame: pd.DataFrame, configs: pd.DataFrame, parity: pd.DataFrame,
                 regress: pd.DataFrame, reconciled, options) -> List[str]:
    """The sweep in a few lines: counts, what is not finished, whether the scheduler's account
    was asked (reconciled: suite.schedulers.Reconciliation), history verdicts, noise, parity,
    measurement errors, unknown GPUs, throttling, versions."""
    from suite.report import analysis

    n_ok = int((frame.status == "ok").sum())
    lines = [f"- sweep: {sweep_name}", f"- runs: {len(frame)}, ok: {n_ok}, failed: {len(frame) - n_ok}"]
    if reconciled.unfinished:
        lines.append(f"- not finished yet (pending or running in Slurm): {_names(reconciled.unfinished)}")
    if reconciled.skipped:
        lines.append(f"- reconciliation with the scheduler skipped ({reconciled.skipped}): "
                     f"runs without a record, their state unknown: {_names(reconciled.unknown)}")
    if options.history_dir:
        n_reg = int((regress.verdict == "regression").sum())
        n_imp = int((regress.verdict == "improvement").sum())
        lines.append(f"- against history ({options.history_dir}): {_count(n_reg, 'regression')}, "
                     f"{_count(n_imp, 'improvement')}, {_count(len(regress), 'configuration')} compared")
    if configs.noisy.any():
        reasons = configs.noisy_reason.fillna("") if "noisy_reason" in configs else pd.Series("", index=configs.index)
        by_step = int(reasons.str.contains("step CV").sum())
        by_repeats = int(reasons.str.contains("repeat CV").sum())
        lines.append(f"- too noisy to compare (a CV above report.max_cv {options.max_cv:.0%}): "
                     f"{int(configs.noisy.sum())} of {_count(len(configs), 'configuration')} "
                     f"(step CV within a run: {by_step}; repeat CV across repeats: {by_repeats})")
    if not parity.empty:
        compared = parity[parity.matches.isin(["yes", "NO"])]
        mismatched = compared[compared.matches == "NO"]
        lines.append(f"- loss parity: {len(compared) - len(mismatched)} of {len(compared)} compared runs "
                     f"match plain data parallel" + (f"; NOT: {', '.join(mismatched.strategy)}" if len(mismatched) else "")
                     + (f"; not compared (no comparable ddp run or the run failed): {len(parity) - len(compared)}"
                        if len(parity) > len(compared) else ""))
    configs = configs.assign(label=configuration_labels(configs)[1])
    errors = configs[configs.measurement_error.fillna("") != ""] if "measurement_error" in configs else configs.iloc[:0]
    if len(errors):
        lines.append("- measurement error: a share of a ceiling above 100% (shown as 'error', not "
                     "a result) in " + "; ".join(f"{r.label} ({r.measurement_error})"
                                                 for r in errors.itertuples()))
    unknown = analysis.unknown_gpus(frame)
    if unknown:
        lines.append(f"- warning: GPU(s) not in the peak table, MFU left empty: {', '.join(unknown)} "
                     "(suite/metrics.py DEVICE_NAMES)")
    throttled = configs[configs.throttled.fillna(False).astype(bool)] if "throttled" in configs else configs.iloc[:0]
    if len(throttled):
        lines.append(f"- clocks throttled (power or heat) during the timed steps of {len(throttled)} "
                     "configuration(s): " + ", ".join(throttled.label))
    measured = frame.dropna(subset=["env_torch"])
    if len(measured):
        v = measured.iloc[0]
        lines.append(f"- torch {v.env_torch}, DeepSpeed {v.env_deepspeed}, device {v.env_device_name}")
    return lines


def _names(names: List[str]) -> str:
    return f"{len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def engines_section(pairs: pd.DataFrame) -> Optional[Section]:
    """DeepSpeed beside PyTorch (analysis.engine_comparison)."""
    if pairs.empty:
        return None
    ratio = fmt(".2f")
    table = show(pairs, {
        "model": ("model", None), "world_size": ("ranks", fmt(".0f")), "nodes": ("nodes", fmt(".0f")),
        "precision": ("precision", None), "optimizer": ("optimizer", None),
        "micro_batch_size": ("micro", fmt(".0f")), "pair": ("DeepSpeed vs PyTorch", None),
        "deepspeed_tokens_per_s_per_device": ("DeepSpeed tokens/s/device", fmt(",.0f")),
        "torch_tokens_per_s_per_device": ("PyTorch tokens/s/device", fmt(",.0f")),
        "throughput_ratio": ("tokens/s PyTorch/DeepSpeed", ratio),
        "deepspeed_peak_memory_bytes": ("DeepSpeed peak (MiB)", mib),
        "torch_peak_memory_bytes": ("PyTorch peak (MiB)", mib),
        "memory_ratio": ("peak PyTorch/DeepSpeed", ratio),
        "deepspeed_settings": ("DeepSpeed overlap", None), "torch_settings": ("PyTorch overlap", None)})
    return Section("DeepSpeed and PyTorch side by side", [
        "The same model, ranks, precision, optimizer, batch and recomputation under DeepSpeed and "
        "under PyTorch's own engines: ZeRO-3 against FSDP2 (fully_shard per block, then the whole "
        "model) and ZeRO-0 against DistributedDataParallel, each configured as its users run it "
        "(DeepSpeed's own defaults, so ZeRO-3 overlaps its communication as FSDP2 does; the overlap "
        "columns say what each side had). A ratio above 1 means PyTorch is faster "
        "(tokens/s) or needs more memory (peak). On the CPU the peak is the process's resident set, "
        "runtime included, so memory ratios there are close to 1 whatever the engine. Where the two "
        "cannot be made equal: docs/layouts.md, 'PyTorch baselines'."], [("", table)])


def autotune_section(summary: Optional[dict]) -> Optional[Section]:
    """The search of experiment=autotune (autotune.json, written by the sweeper)."""
    if not summary:
        return None
    gib = lambda v: "" if v is None else f"{v / 2 ** 30:.2f}"  # noqa: E731
    rows = []
    for p in summary["points"]:
        short = [r for r in p["runs"] if not r["final"]]
        final = [r for r in p["runs"] if r["final"]]
        rows.append({"configuration": p["label"], "outcome": p["outcome"],
                     "required GiB": gib(p["required_bytes"]), "available GiB": gib(p["available_bytes"]),
                     "short run tokens/s/device": fmt(",.0f")(short[-1]["tokens_per_s_per_device"]) if short else "",
                     "full run tokens/s/device": fmt(",.0f")(final[-1]["tokens_per_s_per_device"]) if final else "",
                     "run-seconds": fmt(".1f")(sum(r.get("run_wall_s") or 0 for r in p["runs"])),
                     "why": p["reason"] or ""})
    lines = []
    if summary["best"]:
        margin, noise = summary["margin"], summary.get("margin_noise")
        line = (f"Best: {summary['best']} at {summary['best_tokens_per_s_per_device']:,.0f} tokens/s per device"
                + (f", {margin:.1%} ahead of {summary['runner_up']} (both at full length)"
                   if margin is not None else " (no runner-up reached full length)"))
        if margin is not None and noise is not None and margin < noise:
            line += (f": inside the runs' noise (±{noise:.1%}, two standard errors from their step times), "
                     "a tie, not a winner; more timed steps or submit.repeats would separate them")
        lines.append(line + ".")
    else:
        lines.append("No configuration finished at full length.")
    grid = summary["grid_estimate_s"]
    lines.append(f"Spent {summary['run_seconds']:.0f} run-seconds on {summary['runs']} runs. A full grid "
                 f"would start {summary['grid_points']} points at full length: about "
                 + (f"{grid:.0f} run-seconds" if grid is not None else "? run-seconds")
                 + " (an estimate: the mean full-length run times the points; points never run were not measured).")
    s = summary["settings"]
    lines.append(f"Search: successive halving with eta={s['reduction_factor']}, short rungs of {s['rung_steps']} "
                 f"timed steps, {s['finalists']} finalists at full length; memory verdicts from the memory model "
                 f"(docs/memory.md), {s['boundary_checks']} ruled-out point(s) nearest the limit run anyway to check it.")
    return Section("Autotune", lines, [("", pd.DataFrame(rows))])
