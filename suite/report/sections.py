"""The report's sections: the analysis results (suite/report/analysis.py) as display tables
and plots, and the header lines that summarise a sweep."""
from __future__ import annotations

from typing import Dict, List, Optional

import matplotlib.pyplot as plt
import pandas as pd

from suite.metrics import implausible
from suite.report.analysis import TIE, configuration_labels
from suite.report.render import MIB, Section, fmt, metric, mib, pct, png, share, show

PLOTTED = 30  # most configurations in one throughput or trend plot


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
            known = [i for i, (lo, hi) in enumerate(zip(*intervals)) if pd.notna(lo) and pd.notna(hi)]
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
                                     "the clocks down during the timed steps. The 95% interval of "
                                     "tokens/s per device: a bootstrap over the repeats and each "
                                     "run's timed steps (docs/report.md, 'Noise'). Beside the throughput "
                                     "plot: MFU (where a peak is known) and the memory model's "
                                     "predicted peak against the measured one (GPUs)."])
    for model, group in configs.groupby("model"):
        group = group.sort_values(ORDER)
        others, labels = configuration_labels(group, shown=THROUGHPUT_AXES)
        group = group.assign(layout=group.apply(_layout, axis=1), configuration=labels if others else "",
                             tps_interval=[_interval(lo, hi, ",.0f") for lo, hi in zip(
                                 group.get("tokens_per_s_per_device_low", [None] * len(group)),
                                 group.get("tokens_per_s_per_device_high", [None] * len(group)))])
        table = show(group, _with_configuration({
            "strategy": ("strategy", None), "optimizer": ("optimizer", None),
            "precision": ("precision", None), "world_size": ("ranks", fmt(".0f")),
            "nodes": ("nodes", fmt(".0f")),
            "layout": (LAYOUT, None), "micro_batch_size": ("micro", fmt(".0f")),
            "grad_accum_steps": ("accum", fmt(".0f")),
            "activation_checkpointing": ("recompute", None),
            "compile": ("compiled", lambda v: "" if pd.isna(v) or not v else "yes"),
            **{name: metric(name) for name in THROUGHPUT_METRICS[:1]},
            "tps_interval": ("95% interval", None),
            **{name: metric(name) for name in THROUGHPUT_METRICS[1:4]},
            "of_gemm_ceiling": ("of GEMM ceiling", share),
            **{name: metric(name) for name in THROUGHPUT_METRICS[4:8]},
            "repeats": ("repeats", fmt(".0f")), "repeat_cv": ("repeat CV", pct),
            "noisy": ("too noisy", lambda v: "yes" if v else ""),
            **{name: metric(name) for name in THROUGHPUT_METRICS[8:]}}, group, "compile"))
        section.tables.append((str(model), table))
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
        _interval(lo, hi, "pct0") for lo, hi in zip(scaling.efficiency_low, scaling.efficiency_high)])
    table = show(scaling, _with_configuration({
        "model": ("model", None), "strategy": ("strategy", None), "mode": ("mode", None),
        "world_size": ("ranks", fmt(".0f")), "nodes": ("nodes", fmt(".0f")),
        "global_batch_size": ("global batch", fmt(".0f")),
        "tokens_per_s": ("tokens/s", fmt(",.0f")), "tokens_per_s_per_device": ("tokens/s/device", fmt(",.0f")),
        "speedup": ("speed-up", fmt(".2f")), "efficiency": ("efficiency", pct),
        "efficiency_interval": ("95% interval", None),
        "noisy": ("too noisy", lambda v: "yes" if v else "")}, scaling, "mode"))
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


def best_section(best: pd.DataFrame) -> Section:
    table = show(best.assign(margin_interval=[_interval(lo, hi, "pct") for lo, hi in zip(best.margin_low, best.margin_high)]),
                 {"model": ("model", None), "world_size": ("ranks", fmt(".0f")),
                  "configuration": ("best configuration", None),
                  "tokens_per_s_per_device": ("tokens/s/device", fmt(",.0f")),
                  "memory_headroom_bytes": ("memory headroom (MiB)", mib),
                  "runner_up": ("runner-up", None), "margin": ("ahead by", pct),
                  "margin_interval": ("95% interval", None), "verdict": ("verdict", lambda v: v or "—")})
    return Section("Best configuration per model and world size",
                   ["Ranked by tokens/s per device; headroom = device memory (CPU: RAM / local "
                    "ranks) - peak memory. The margin's 95% interval is a bootstrap over both "
                    "configurations' repeats and timed steps; where it reaches zero the two are a "
                    "tie, not a winner and a loser: more repeats (submit.repeats) narrow it."], [("", table)])


def _interval(low, high, form: str) -> str:
    """'[a, b]' of an interval ('—' without one): a format spec, or pct for shares."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "—"
    if form == "pct":
        return f"[{low * 100:+.1f}%, {high * 100:+.1f}%]"
    if form == "pct0":  # a share, not a change
        return f"[{low * 100:.1f}%, {high * 100:.1f}%]"
    return f"[{format(low, form)}, {format(high, form)}]"


def ties_line(best: pd.DataFrame) -> Optional[str]:
    """How many best-configuration margins are inside the noise (None when none was judged)."""
    judged = best.dropna(subset=["verdict"]) if "verdict" in best else best.iloc[:0]
    if judged.empty:
        return None
    ties = judged[judged.verdict == TIE]
    return (f"- best configuration: {len(ties)} of {_count(len(judged), 'margin')} over the runner-up "
            f"inside the noise (a tie: add submit.repeats)" if len(ties) else
            f"- best configuration: {_count(len(judged), 'margin')} over the runner-up beyond the noise")


def model_section(model: pd.DataFrame) -> Section:
    table = show(model, _with_configuration({
        "model": ("model", None), "strategy": ("strategy", None), "world_size": ("ranks", fmt(".0f")),
        "model_state_bytes_predicted": ("model states, ZeRO paper (MiB)", mib),
        "deepspeed_estimate_bytes": ("DeepSpeed estimate (MiB)", mib),
        "peak_memory_bytes": ("measured peak (MiB)", mib), "memory_ratio": ("measured/model", fmt(".2f")),
        "memory_predicted_bytes": ("predicted peak, memory model (MiB)", mib),
        "peak_ratio": ("measured/predicted peak", fmt(".2f")),
        "comm_bytes_per_step_predicted": ("comm/step, model (MiB)", mib),
        "comm_bytes_per_step_counted": ("comm/step, comms logger (MiB)", mib),
        "comm_ratio": ("logged/model", fmt(".2f")), "flag": ("flag", None)}, model, "strategy"))
    return Section("Memory and communication: model vs measured", [
        "Model states per device (ZeRO paper): stage 0 (P+G+O)Ψ, 1 (P+G)Ψ+OΨ/N, 2 PΨ+(G+O)Ψ/N, "
        "3 (P+G+O)Ψ/N bytes, with P, G the parameter and gradient bytes, O the optimizer's "
        "(fp32 master copy included in mixed precision), N the ranks sharing the parameters "
        "(data parallel, times the sequence-parallel degree under Ulysses), Ψ the "
        "parameters per rank. DeepSpeed's estimator (stages 2-3) assumes mixed-precision Adam. "
        "Communication per step and rank: 2Ψ(N-1)/N gradient bytes for stages 0-2, 3Ψ(N-1)/N for "
        "stage 3, against the bytes DeepSpeed's comms logger counted (runs with "
        "train.profile_comms=true; its latencies are not used). The predicted peak is the memory "
        "model's (docs/memory.md: model states, activations, logits and loss, ZeRO/DDP/FSDP "
        "buffers; without the allocator allowance), judged against torch.cuda.max_memory_allocated; "
        "a peak above it by more than the allowance is flagged. On the CPU the measured peak is "
        "the resident set of the whole process, so memory is not compared there."], [("", table)])


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
    table = show(regress, _with_configuration(columns, regress, "world_size"))
    sections.append(Section("Regressions against history", [
        "Two rules, side by side. Median/MAD: baseline = median of the configuration's last "
        f"{options.window} nights, noise = 1.4826 x their median absolute deviation; a regression "
        "is a drop below baseline - max(min_drop x baseline, noise_sigmas x noise), the allowed "
        "drop capped at max_allowed_drop x baseline; an improvement likewise upwards. Otava "
        "(Apache Otava's E-Divisive with t-tests over all of the configuration's nights, window "
        f"{options.otava_window}, p < {options.otava_max_pvalue:g}, change > "
        f"{options.otava_min_magnitude:.0%}): a regression when its latest change point is a drop "
        f"that started within the last {options.window} nights. The verdict is "
        f"report.change_method's ({options.change_method}); Otava judges configurations with at "
        f"least {options.otava_min_nights} nights, the median/MAD rule the others. Their error "
        "rates on synthetic histories: bench/RESULTS.md, 'Change-point detection'."], [("", table)]))
    found = changes.dropna(subset=["change"]) if len(changes) else changes
    if len(found):
        sections.append(Section("Change points (Apache Otava)", [
            "Every configuration of the history with a change point: the night its latest change "
            "started, its size (mean after / mean before - 1) and the t-test's p-value."],
            [("", show(found, {"model": ("model", None), "strategy": ("strategy", None),
                               "optimizer": ("optimizer", None), "precision": ("precision", None),
                               "world_size": ("ranks", fmt(".0f")), "nights": ("nights", fmt(".0f")),
                               "change_sweep_date": ("change started", None),
                               "change_sweep_id": ("first sweep after it", None),
                               "nights_since": ("nights ago", fmt(".0f")), "change": ("size", pct),
                               "before": ("before", fmt(",.0f")), "after": ("after", fmt(",.0f")),
                               "pvalue": ("p-value", fmt(".1g"))}))]))
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


def stragglers_section(runs: pd.DataFrame, nodes: pd.DataFrame, options) -> Optional[Section]:
    if runs.empty:
        return None
    section = Section("Stragglers", [
        "Per training run of more than one rank: the rank whose forward pass is slowest (each "
        "rank's median over the timed steps, device-synchronised) against the median of the "
        "other ranks. A step's time is the same on every rank, since its collectives wait for "
        "the slowest; the forward pass is where a rank's own speed shows (under ZeRO-3, tensor "
        "and sequence parallelism it holds collectives too, which spread a straggler's delay to "
        "its peers; the pipeline engine's schedule is not split, so pipeline runs are not here). "
        f"Flagged: excess above max({options.straggler_min_excess:.0%}, "
        f"{options.straggler_noise_sigmas:g} x the run's noise: the larger of its step-time CV "
        "and its ranks' median forward-time CV across steps). Per node, over the runs that span "
        "several nodes: the runs it took part in and those in which it held the flagged rank; a "
        "node flagged in more than one run is called slow."])
    section.tables.append(("Runs", show(runs.sort_values(["flagged", "excess"], ascending=False), {
        "run_id": ("run", None), "strategy": ("strategy", None), "world_size": ("ranks", fmt(".0f")),
        "slowest_rank": ("slowest rank", fmt(".0f")), "slowest_host": ("its node", None),
        "slowest_s": ("its forward (s)", fmt(".4f")), "others_median_s": ("others' median (s)", fmt(".4f")),
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
        lines.append(f"- too noisy to compare (repeat CV > {options.max_cv:.0%}): "
                     f"{int(configs.noisy.sum())} configurations")
    if not parity.empty:
        compared = parity[parity.matches.isin(["yes", "NO"])]
        mismatched = compared[compared.matches == "NO"]
        lines.append(f"- loss parity: {len(compared) - len(mismatched)} of {len(compared)} compared runs "
                     f"match plain data parallel" + (f"; NOT: {', '.join(mismatched.strategy)}" if len(mismatched) else "")
                     + (f"; not compared (no ddp run or the run failed): {len(parity) - len(compared)}"
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
