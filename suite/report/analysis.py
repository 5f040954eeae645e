"""Pure report maths on the runs DataFrame: repeats, scaling efficiency, best configurations,
model vs measurement, regressions against a history. Frames in, frames out."""
from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from suite.metric_registry import BY_NAME
from suite.memory import ALLOCATOR_ALLOWANCE
from suite.metrics import device_key, implausible, loss_parity
from suite.report import intervals

# Axes that tell two runs of one configuration apart without changing what is measured.
NOT_CONFIGURATION = ("repeat_index",)
# Environment fields compared when a configuration regressed ("what changed").
ENV_FIELDS = ["env_torch", "env_deepspeed", "env_cuda", "env_nccl", "env_driver",
              "env_device_name", "env_hostnames", "env_git_revision", "env_variables"]
# Variables that differ between any two jobs and so say nothing of what changed: Slurm's job,
# array and step ids, a job's times and node list (the hosts are compared as hostnames), the
# rendezvous address and port.
PER_JOB_VARIABLES = re.compile(r"SLURM_(JOB_?ID|ARRAY_\w+|JOB_(START|END)_TIME|JOB_NODELIST|JOB_GPUS|"
                               r"STEP_\w+|PROCID|LOCALID|NODEID|TASK_PID)|MASTER_(ADDR|PORT)|"
                               r"SUITE_RESULTS_DIR")  # where a sweep writes: no condition of a measurement

# How a label names an axis: "mb 4", "ranks 8"; the axes not listed here by their value alone
# ("zero2", "adamw", "bf16").
AXIS_NAMES = {"world_size": "ranks", "nodes": "nodes", "ranks_per_node": "per node", "data_parallel": "dp",
              "tensor_parallel": "tp", "pipeline_parallel": "pp", "sequence_parallel": "sp",
              "zero_stage": "stage", "offload_optimizer": "offload optimizer", "offload_params": "offload params",
              "activation_checkpointing": "recompute", "compile": "compiled", "check_parity": "parity",
              "scaling": "scaling", "micro_batch_size": "mb", "grad_accum_steps": "accum",
              "global_batch_size": "global batch", "seq_len": "seq", "n_params": "params"}
# Axes that follow from others (the model's family and size, the strategy's engine, stage, layout
# and offload, the device, the data-parallel degree, ranks per node, the batch arithmetic): a label
# names one only where it tells apart rows that the other axes do not.
FOLLOWING = ("model_family", "n_params", "engine", "zero_stage", "offload_optimizer", "offload_params",
             "accelerator", "data_parallel", "tensor_parallel", "pipeline_parallel", "sequence_parallel",
             "ranks_per_node", "grad_accum_steps", "global_batch_size")


#: how configuration_key is made; history files whose rows carry another (or none) have their
#: keys made again from their configs when loaded (suite/report/history.py)
KEY_VERSION = 2


def configuration_key(config_json: str) -> str:
    """A configuration's identity across repeats and nights: its config without the repeat
    index and without every schema field at its default (version 2: a field added to the schema
    later, with its default, changes no key, whether a record lacks it or holds its default;
    version 1 filled the lacking fields in, so every new field changed every key), and the
    training workload under its current name."""
    config = json.loads(config_json) if config_json else {}
    defaults = _schema_defaults()
    data = config.get("data")
    if isinstance(data, dict) and data.get("token_dtype") == "<redacted>":
        # records before 2026-11-30 redacted this field by its name; the default stands in for
        # it (it matters only with data=tokens, whose dtype the path's file fixes anyway)
        config["data"] = {**data, "token_dtype": defaults["data"]["token_dtype"]}
    strategy = config.get("strategy")
    if isinstance(strategy, dict) and strategy.get("overlap_comm") is None:
        # null is DeepSpeed's own default (suite.config.deepspeed_overlap_comm): what the run had,
        # so ZeRO-1/2 nights from before null was the default (false, written out) keep their key
        config["strategy"] = {**strategy, "overlap_comm": strategy.get("zero_stage") == 3}
    if (config.get("workload") or {}).get("name") == "gpt":  # its name before model families
        config["workload"]["name"] = "train"
    train = dict(config.get("train") or {})
    for key in NOT_CONFIGURATION:
        train.pop(key, None)
    config["train"] = train
    config = {group: ({k: v for k, v in values.items() if k not in defaults[group] or v != defaults[group][k]}
                      if isinstance(values, dict) and group in defaults else values)
              for group, values in config.items()}
    text = json.dumps(config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _schema_defaults() -> Dict[str, dict]:
    from dataclasses import asdict

    from suite.config import SuiteConfig

    return {group: values for group, values in asdict(SuiteConfig()).items() if isinstance(values, dict)}


def _axis_value(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def configuration_labels(configs: pd.DataFrame, shown: Sequence[str] = ()) -> Tuple[List[str], pd.Series]:
    """The configuration axes that vary among the rows, and a label per row naming them
    ("zero2 / adamw / mb 4"), for every table and plot. `shown`: axes the caller shows on its
    own (a column, a plot per model): never named, and what follows from them is not named
    either. Returns ([] and each row's strategy) when no other axis varies."""
    from suite.report.collate import AXES  # collate imports this module

    if configs.empty:
        return [], pd.Series(dtype="string", index=configs.index)
    text = pd.DataFrame({a: configs[a].map(_axis_value) for a in AXES
                         if a in configs.columns and a not in NOT_CONFIGURATION}, index=configs.index)
    known = [a for a in shown if a in text]

    values = {a: text[a].tolist() for a in text}  # plain lists: a set of tuples is ~100x a pandas drop_duplicates

    def distinct(axes: List[str]) -> int:
        return len(set(zip(*(values[a] for a in axes)))) if axes else 1

    named = [a for a in text if a not in known and a not in FOLLOWING and text[a].nunique() > 1]
    for axis in (a for a in text if a in FOLLOWING and a not in known):
        if distinct(known + named + [axis]) > distinct(known + named):
            named.append(axis)
    named = [a for a in text if a in named]  # in the axes' order
    if not named:
        fallback = configs.strategy if "strategy" in configs else pd.Series("", index=configs.index)
        return [], fallback.map(_axis_value).astype("string")
    labels = text[named].apply(lambda row: " / ".join(
        f"{AXIS_NAMES[a]} {v}" if a in AXIS_NAMES else v for a, v in row.items()), axis=1)
    return named, labels.astype("string")


def aggregate_repeats(frame: pd.DataFrame, max_cv: float) -> pd.DataFrame:
    """One row per configuration (ok runs): the median of each metric over its repeats, the
    repeats' coefficient of variation of tokens/s per device, and whether it is too noisy: its
    step CV (the median over its repeats of each run's step-time CV) or its repeat CV above
    max_cv, so that one run whose steps vary is too noisy too; noisy_reason says which CV
    decided ("step CV 29.5%", "repeat CV 8.0%", or both)."""
    ok = frame[frame.status == "ok"].copy()
    if ok.empty:
        return ok.assign(config_key=pd.Series(dtype=str), repeats=pd.Series(dtype=int),
                         repeat_cv=pd.Series(dtype=float), noisy=pd.Series(dtype=bool),
                         noisy_reason=pd.Series(dtype=str))
    if "config_key" not in ok or ok.config_key.isna().any():
        ok["config_key"] = ok.config_json.map(configuration_key)
    numeric = ok.select_dtypes("number").columns.drop(NOT_CONFIGURATION, errors="ignore")
    medians = ok.groupby("config_key")[list(numeric)].median()
    spread = ok.groupby("config_key")["tokens_per_s_per_device"].agg(["count", "mean", "std"])
    first = ok.groupby("config_key").first().drop(columns=list(numeric))
    out = first.join(medians).reset_index()
    out["repeats"] = out.config_key.map(spread["count"])
    cv = (spread["std"] / spread["mean"]).where(spread["count"] > 1)
    out["repeat_cv"] = out.config_key.map(cv)
    step_cv = out.step_time_cv if "step_time_cv" in out else pd.Series(float("nan"), index=out.index)
    reasons = [", ".join(f"{name} {value * 100:.1f}%" for name, value in (("step CV", s), ("repeat CV", r))
                         if pd.notna(value) and value > max_cv)
               for s, r in zip(step_cv.astype("float64"), out.repeat_cv.astype("float64"))]
    out["noisy_reason"] = pd.Series(reasons, index=out.index, dtype="object")
    out["noisy"] = out.noisy_reason != ""
    return out


# What the device count changes in a scaling study: the ranks, their nodes, the data-parallel
# degree, and what the mode derives from them (weak: the global batch grows with N; strong: the
# accumulation shrinks). Every other configuration axis is held within a study.
DEVICE_COUNT = ("world_size", "nodes", "ranks_per_node", "data_parallel")
FOLLOWS_THE_DEVICE_COUNT = {"weak": ("global_batch_size",), "strong": ("grad_accum_steps",)}
SCALING_COLUMNS = ["model", "strategy", "mode", "configuration", "world_size", "nodes", "global_batch_size",
                   "tokens_per_s", "tokens_per_s_per_device", "step_time_median_s", "speedup",
                   "efficiency", "efficiency_low", "efficiency_high", "noisy", "noisy_reason"]


def scaling_table(configs: pd.DataFrame, runs: Optional[Dict[str, list]] = None) -> pd.DataFrame:
    """Speed-up and efficiency per study against its smallest measured world size N0. A study:
    the configurations of one mode equal in every axis but the device count (DEVICE_COUNT and
    what follows from it), so a sweep over optimizer, precision or micro-batch makes a study of
    each. Weak: efficiency = (T(N)/N) / (T(N0)/N0), T = tokens/s. Strong (same global batch):
    efficiency = t(N0) N0 / (t(N) N), t = step time; speed-up = t(N0)/t(N). `configuration`
    names the axes that tell studies of one model and strategy apart ("" if none). With `runs`
    (intervals.runs_by_configuration), each efficiency beyond N0 carries the bootstrap interval
    of its runs' rate against N0's (efficiency_low, efficiency_high; null without step times)."""
    from suite.report.collate import AXES  # collate imports this module

    study = configs[configs.scaling.isin(["weak", "strong"])]
    varying, labels = configuration_labels(study, shown=("model", "strategy", "scaling", "global_batch_size")
                                           + DEVICE_COUNT)
    study = study.assign(configuration=labels if varying else "")
    rows = []
    for mode, studies in study.groupby("scaling"):
        held = [a for a in AXES if a in studies and a not in DEVICE_COUNT + FOLLOWS_THE_DEVICE_COUNT[mode]
                and a not in NOT_CONFIGURATION]
        for _, group in studies.groupby(held, dropna=False):
            group = group.sort_values(["world_size", "nodes"])
            base = group.iloc[0]
            n0 = base.world_size
            for _, r in group.iterrows():
                n = r.world_size
                if mode == "weak":
                    speedup = r.tokens_per_s / base.tokens_per_s
                    efficiency = (r.tokens_per_s / n) / (base.tokens_per_s / n0)
                else:
                    speedup = base.step_time_median_s / r.step_time_median_s
                    efficiency = base.step_time_median_s * n0 / (r.step_time_median_s * n)
                low = high = None
                if runs and r.config_key != base.config_key and runs.get(r.config_key) and runs.get(base.config_key):
                    change, lo, hi = intervals.change_interval(runs[base.config_key], runs[r.config_key])
                    low, high = intervals.scaled(efficiency, change, lo, hi)
                rows.append({"model": r.model, "strategy": r.strategy, "mode": mode,
                             "configuration": r.configuration, "world_size": int(n),
                             "nodes": None if pd.isna(r.nodes) else int(r.nodes),
                             "global_batch_size": int(r.global_batch_size), "tokens_per_s": r.tokens_per_s,
                             "tokens_per_s_per_device": r.tokens_per_s_per_device,
                             "step_time_median_s": r.step_time_median_s, "speedup": speedup,
                             "efficiency": efficiency, "efficiency_low": low, "efficiency_high": high,
                             "noisy": bool(r.noisy), "noisy_reason": r.get("noisy_reason") or ""})
    table = pd.DataFrame(rows, columns=SCALING_COLUMNS)
    return table.sort_values(["model", "strategy", "mode", "configuration"], kind="stable").reset_index(drop=True)


STRAGGLER_COLUMNS = ["run_id", "model", "strategy", "world_size", "slowest_rank", "slowest_host",
                     "slowest_s", "others_median_s", "excess", "threshold", "flagged"]


def stragglers(frame: pd.DataFrame, min_excess: float, noise_sigmas: float
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per training run with per-rank forward times: the slowest rank against the median of
    the others. Each rank's figure is its fastest timed step's forward seconds (`_rank_figures`):
    a straggler is slow at every step, while another process taking a core for a few steps
    slows any rank now and then (seen: 5-28 ms bursts on a 2.3 ms forward pass, on either rank,
    under every layout). excess = slowest / median - 1, flagged when above max(min_excess,
    noise_sigmas x the run's noise), noise = the median over ranks of the robust spread of their
    forward times (1.4826 MAD / median, blind to bursts in fewer than half the steps). Records
    from before the per-step forward times were kept: each rank's median, and noise = the larger
    of the step-time CV and the median forward-time CV. Per
    node, over the runs that span several nodes (in a run on one node the node is no suspect):
    the runs it took part in and those in which it held the flagged rank; `slow` = more than
    one. Returns (runs, nodes)."""
    runs, taking_part = [], {}
    trained = frame[(frame.workload == "train") & (frame.status == "ok")]
    for r in trained.dropna(subset=["per_rank_json"]).itertuples():
        ranks = json.loads(r.per_rank_json)
        times, hosts = ranks.get("forward_time_s") or [], ranks.get("hosts") or []
        pp = getattr(r, "pipeline_parallel", None)
        if (len(times) < 2 or any(t is None for t in times) or len(hosts) != len(times)
                or (pd.notna(pp) and pp > 1)):
            continue  # one rank, not measured, or ranks that differ by design: straggler_exclusions
        times, noise = _rank_figures(ranks, times, r.step_time_cv)
        slowest = max(range(len(times)), key=lambda i: times[i])
        others = pd.Series([t for i, t in enumerate(times) if i != slowest]).median()
        excess = times[slowest] / others - 1 if others > 0 else None
        threshold = max(min_excess, noise_sigmas * noise)
        flagged = excess is not None and excess > threshold
        runs.append({"run_id": r.run_id, "model": r.model, "strategy": r.strategy,
                     "world_size": r.world_size, "slowest_rank": slowest, "slowest_host": hosts[slowest],
                     "slowest_s": times[slowest], "others_median_s": others, "excess": excess,
                     "threshold": threshold, "flagged": flagged})
        if len(set(hosts)) > 1:
            for host in set(hosts):
                taking_part.setdefault(host, [0, 0])[0] += 1
            if flagged:
                taking_part[hosts[slowest]][1] += 1
    nodes = pd.DataFrame([{"host": h, "runs": n, "flagged_runs": k, "slow": k > 1}
                          for h, (n, k) in sorted(taking_part.items())],
                         columns=["host", "runs", "flagged_runs", "slow"])
    return pd.DataFrame(runs, columns=STRAGGLER_COLUMNS), nodes


def _robust_cv(values: List[float]) -> float:
    """1.4826 x the median absolute deviation over the median (the CV of normal noise, blind to
    outliers in fewer than half the values); 0 for fewer than 2 values."""
    series = pd.Series(values, dtype=float)
    median = series.median()
    if len(series) < 2 or not median:
        return 0.0
    return float(1.4826 * (series - median).abs().median() / median)


def _rank_figures(ranks: dict, medians: List[float], step_time_cv: float) -> tuple[List[float], float]:
    """Each rank's straggler figure and the run's noise (stragglers' rule)."""
    per_step = ranks.get("forward_times_s") or []
    if len(per_step) == len(medians) and all(per_step):
        return ([min(t) for t in per_step],
                float(pd.Series([_robust_cv(t) for t in per_step], dtype=float).median()))
    forward_cv = pd.Series(ranks.get("forward_time_cv") or [], dtype=float).median()
    return medians, max(0.0 if pd.isna(step_time_cv) else step_time_cv, 0.0 if pd.isna(forward_cv) else forward_cv)


# Layouts whose ranks do different work by design, which the straggler rule does not judge: a
# rank is compared with the other ranks of its run, so they must all run the same forward pass.
# Every other layout's do: data parallel, ZeRO 0-3 and ZeRO-Offload (each rank's optimizer step,
# on the CPU under offload, is on its own equal partition and outside the timed forward passes),
# tensor parallel (equal shards of every layer) and Ulysses sequence parallel (equal slices).
PIPELINE_NOT_JUDGED = ("pipeline stages do different work by design (each holds its own layers, "
                       "the first the embedding, the last the loss) and the pipeline engine runs "
                       "forward and backward as one schedule, so no rank's forward pass is timed apart")


def straggler_exclusions(frame: pd.DataFrame) -> pd.DataFrame:
    """The ok training runs of 2+ ranks that stragglers() does not judge, each with the reason:
    pipeline layouts (PIPELINE_NOT_JUDGED), and records without per-rank forward times."""
    rows = []
    trained = frame[(frame.workload == "train") & (frame.status == "ok") & (frame.world_size.fillna(1) > 1)]
    for r in trained.itertuples():
        ranks = json.loads(r.per_rank_json) if isinstance(r.per_rank_json, str) else {}
        times = ranks.get("forward_time_s") or []
        pp = getattr(r, "pipeline_parallel", None)
        if pd.notna(pp) and pp > 1:
            rows.append({"run_id": r.run_id, "strategy": r.strategy, "reason": PIPELINE_NOT_JUDGED})
        elif len(times) < 2 or any(t is None for t in times):
            rows.append({"run_id": r.run_id, "strategy": r.strategy,
                         "reason": "no forward time per rank in its record (written before they were kept)"})
    return pd.DataFrame(rows, columns=["run_id", "strategy", "reason"])


TIE, CLEAR = "tie: inside the noise, add submit.repeats", "clear"


def best_configurations(configs: pd.DataFrame, runs: Optional[Dict[str, list]] = None) -> pd.DataFrame:
    """Per (model, world size): the fastest configuration by tokens/s per device, its memory
    headroom (capacity - peak, per device) and how much faster it is than the runner-up. Both
    are named by the axes that vary in the sweep (configuration_labels). With `runs`
    (intervals.runs_by_configuration) the margin carries its bootstrap interval, and a margin
    whose interval reaches zero is a tie, not a winner (verdict)."""
    rows = []
    measured = configs.dropna(subset=["tokens_per_s_per_device"])
    measured = measured.assign(label=configuration_labels(measured, shown=("model", "world_size"))[1])
    for (model, world), group in measured.groupby(["model", "world_size"]):
        ranked = group.sort_values("tokens_per_s_per_device", ascending=False)
        best = ranked.iloc[0]
        runner = ranked.iloc[1] if len(ranked) > 1 else None
        headroom = (best.memory_capacity_bytes - best.peak_memory_bytes
                    if pd.notna(best.get("memory_capacity_bytes")) and pd.notna(best.peak_memory_bytes) else None)
        margin = None if runner is None else best.tokens_per_s_per_device / runner.tokens_per_s_per_device - 1
        low = high = verdict = None
        if runner is not None and runs and runs.get(best.config_key) and runs.get(runner.config_key):
            change, lo, hi = intervals.change_interval(runs[runner.config_key], runs[best.config_key])
            low, high = (x - 1 for x in intervals.scaled(1 + margin, change, lo, hi))
            verdict = CLEAR if low > 0 else TIE
        rows.append({
            "model": model, "world_size": int(world),
            "configuration": best.label,
            "tokens_per_s_per_device": best.tokens_per_s_per_device,
            "memory_headroom_bytes": headroom,
            "runner_up": None if runner is None else runner.label,
            "margin": margin, "margin_low": low, "margin_high": high, "verdict": verdict,
        })
    return pd.DataFrame(rows, columns=["model", "world_size", "configuration", "tokens_per_s_per_device",
                                       "memory_headroom_bytes", "runner_up", "margin", "margin_low",
                                       "margin_high", "verdict"])


DISAGREEMENT_COLUMNS = ["run_id", "stored", "from_steps", "steps"]


def step_time_disagreements(frame: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """Ok training runs whose stored tokens/s per device is not what their own step times give
    (tokens per step and device / mean step time; a run writes both from the same steps, so a
    record edited by hand or written by another version of the suite is what differs by more
    than `tolerance`): run_id, the stored figure, the step times' figure, their count. The report
    keeps the stored figure, gives it no interval and names the run."""
    rows = []
    needed = ["step_times_json", "tokens_per_s_per_device", "global_batch_size", "seq_len", "world_size"]
    if frame.empty or any(c not in frame for c in needed):
        return pd.DataFrame(columns=DISAGREEMENT_COLUMNS)
    ok = frame[(frame.status == "ok") & frame.step_times_json.notna()]
    for r in ok.itertuples():
        try:
            steps = [float(t) for t in json.loads(r.step_times_json)]
        except (TypeError, ValueError):
            steps = None
        stored = r.tokens_per_s_per_device
        if steps is not None and not steps:
            continue
        per_step = r.global_batch_size * r.seq_len / r.world_size
        from_steps = (per_step / float(np.mean(steps)) if steps and all(t > 0 for t in steps)
                      and pd.notna(per_step) and per_step > 0 else None)
        if (from_steps is None or pd.isna(stored) or not stored
                or abs(stored / from_steps - 1) > tolerance):
            rows.append({"run_id": r.run_id, "stored": stored, "from_steps": from_steps,
                         "steps": len(steps) if steps else 0})
    return pd.DataFrame(rows, columns=DISAGREEMENT_COLUMNS)


def rate_intervals(configs: pd.DataFrame, runs: Dict[str, list]) -> pd.DataFrame:
    """tokens/s per device's bootstrap interval per configuration (tokens_per_s_per_device_low,
    _high; null without step times): steps per second's interval x tokens per step and device
    (global batch x sequence length / world size)."""
    low, high = [], []
    for r in configs.itertuples():
        steps = runs.get(r.config_key)
        if not steps:
            low.append(None), high.append(None)
            continue
        per_step = r.global_batch_size * r.seq_len / r.world_size
        lo, hi = intervals.rate_interval(steps)
        low.append(lo * per_step), high.append(hi * per_step)
    return configs.assign(tokens_per_s_per_device_low=pd.Series(low, index=configs.index, dtype="float64"),
                          tokens_per_s_per_device_high=pd.Series(high, index=configs.index, dtype="float64"))


# What each collective puts on the wire per rank, as a multiple of the message the comms logger
# counts (DeepSpeed's comm.utils.get_msg_size_from_args: the `tensor` argument, so an
# all-gather's is the rank's shard, a reduce-scatter's and an all-reduce's the whole buffer), on
# a ring of n ranks (nccl-tests' factors): all_reduce 2(n-1)/n, reduce_scatter, reduce,
# broadcast and all_to_all (n-1)/n, all_gather (n-1) x the shard, point to point 1, barrier 0.
# The first name an op's name contains decides.
WIRE_FACTORS = (("all_reduce", lambda n: 2 * (n - 1) / n), ("allreduce", lambda n: 2 * (n - 1) / n),
                ("reduce_scatter", lambda n: (n - 1) / n), ("all_gather", lambda n: n - 1),
                ("allgather", lambda n: n - 1), ("all_to_all", lambda n: (n - 1) / n),
                ("reduce", lambda n: (n - 1) / n), ("broadcast", lambda n: (n - 1) / n),
                ("barrier", lambda n: 0.0), ("send", lambda n: 1.0), ("recv", lambda n: 1.0))


def wire_bytes(comm: Dict[str, float], ranks: int) -> Optional[float]:
    """The comms logger's message bytes per step (by op) as bytes each rank puts on the wire
    (WIRE_FACTORS), on a ring of `ranks` (the ranks that share the parameters); None for an op
    the table does not know."""
    total = 0.0
    for op, message in comm.items():
        factor = next((f for name, f in WIRE_FACTORS if name in op), None)
        if factor is None:
            return None
        total += factor(ranks) * message
    return total


MODEL_COLUMNS = ["model", "strategy", "configuration", "world_size", "model_state_bytes_predicted",
                 "deepspeed_estimate_bytes", "peak_memory_bytes", "memory_ratio", "memory_predicted_bytes",
                 "peak_ratio", "comm_bytes_per_step_predicted", "comm_message_bytes_logged",
                 "comm_bytes_per_step_counted", "comm_ratio", "flag"]
MODEL_ORDER = ["model", "world_size", "nodes", "strategy", "configuration"]


def model_vs_measured(configs: pd.DataFrame, bounds: List[float]) -> pd.DataFrame:
    """Predicted memory next to the measured peak, and predicted communication next to what the
    comms logger counted; flags disagreements. Memory is judged against the memory model's
    whole prediction (memory_predicted_bytes: model states, activations, logits, buffers):
    measured / predicted below bounds[0] (it over-predicts), or above the allocator allowance
    (or bounds[1], if lower: it under-predicts). Peak / model states (memory_ratio) is shown, not
    judged: activations and DeepSpeed's buffers are no model states. Communication is judged
    like with like, on the wire: the logger counts each collective's message (an all-gather's
    shard, an all-reduce's whole buffer), turned into the bytes each rank sends (wire_bytes) and
    set against the model's 2Ψ(N-1)/N (3Ψ(N-1)/N for stage 3); outside 0.5-2 is flagged, for
    data-parallel layouts only (the model has no tensor, pipeline or sequence-parallel traffic).
    On the CPU the peak is the process's resident set (the runtime included): not compared.
    `configuration` names the other axes that vary (the optimizer in the default sweep). Rows
    in order of model, world size, nodes, strategy and configuration."""
    varying, labels = configuration_labels(configs, shown=("model", "strategy", "world_size"))
    rows = []
    for (_, r), label in zip(configs.iterrows(), labels if varying else [""] * len(configs)):
        on_gpu = isinstance(r.accelerator, str) and r.accelerator == "cuda"
        memory_ratio = (r.peak_memory_bytes / r.model_state_bytes_predicted
                        if on_gpu and pd.notna(r.model_state_bytes_predicted) and r.model_state_bytes_predicted
                        else None)
        comm = json.loads(r.comm_bytes_per_step_json) if isinstance(r.comm_bytes_per_step_json, str) else None
        logged = sum(comm.values()) if comm else None
        degrees = [r.get(a) for a in ("tensor_parallel", "pipeline_parallel", "sequence_parallel")]
        plain = all(pd.isna(d) or d == 1 for d in degrees)
        ranks = r.get("data_parallel")
        ranks = r.world_size if pd.isna(ranks) else ranks
        sp = r.get("sequence_parallel")
        ranks = int(ranks * (1 if pd.isna(sp) else sp))
        counted = wire_bytes(comm, ranks) if comm and ranks > 0 else None
        comm_ratio = (counted / r.comm_bytes_per_step_predicted
                      if counted is not None and pd.notna(r.comm_bytes_per_step_predicted)
                      and r.comm_bytes_per_step_predicted else None)
        predicted = r.get("memory_predicted_bytes")
        peak_ratio = (r.peak_memory_bytes / predicted
                      if on_gpu and pd.notna(predicted) and predicted and pd.notna(r.peak_memory_bytes) else None)
        flags = []
        if peak_ratio is not None and peak_ratio > min(bounds[1], 1 + ALLOCATOR_ALLOWANCE):
            flags.append(f"peak {peak_ratio:.2f}x the memory model: it under-predicts")
        elif peak_ratio is not None and peak_ratio < bounds[0]:
            flags.append(f"peak {peak_ratio:.2f}x the memory model: it over-predicts")
        if comm_ratio is not None and plain and not 0.5 <= comm_ratio <= 2.0:
            flags.append(f"communication on the wire {comm_ratio:.2f}x model")
        rows.append({"model": r.model, "strategy": r.strategy, "configuration": label,
                     "world_size": r.world_size, "nodes": r.get("nodes"),
                     "model_state_bytes_predicted": r.model_state_bytes_predicted,
                     "deepspeed_estimate_bytes": r.deepspeed_estimate_bytes,
                     "peak_memory_bytes": r.peak_memory_bytes, "memory_ratio": memory_ratio,
                     "memory_predicted_bytes": predicted, "peak_ratio": peak_ratio,
                     "comm_bytes_per_step_predicted": r.comm_bytes_per_step_predicted,
                     "comm_message_bytes_logged": logged,
                     "comm_bytes_per_step_counted": counted, "comm_ratio": comm_ratio,
                     "flag": "; ".join(flags)})
    table = pd.DataFrame(rows, columns=MODEL_COLUMNS + ["nodes"])
    table = table.sort_values([c for c in MODEL_ORDER], kind="stable", na_position="first")
    return table[MODEL_COLUMNS].reset_index(drop=True)


def regressions(current: pd.DataFrame, history: pd.DataFrame, *, metric: str = "tokens_per_s_per_device",
                window: int = 7, min_drop: float = 0.05, noise_sigmas: float = 3.0,
                max_allowed_drop: float = 0.5) -> pd.DataFrame:
    """Each configuration of the current sweep against its last `window` sweeps in the history.
    Baseline = median of those sweeps' values; noise = 1.4826 x their median absolute deviation.
    Regression: value < baseline - allowed, allowed = max(min_drop x baseline, noise_sigmas x
    noise) capped at max(max_allowed_drop, min_drop) x baseline (a few noisy nights cannot
    hide a halving);
    improvement symmetrically; for a metric where less is better (the registry's direction, e.g.
    step time) the other way round. Regressions and improvements carry the environment differences against the
    configuration's latest baseline sweep."""
    past = history[~history.sweep_id.isin(current.sweep_id.unique())]
    if past.empty or current.empty:
        return pd.DataFrame(columns=REGRESSION_COLUMNS)
    per_sweep = (past.groupby(["config_key", "sweep_id"], sort=False)
                 .agg(value=(metric, "median"), finished_at=("finished_at", "max")).reset_index()
                 .sort_values(["config_key", "finished_at"]))
    recent = per_sweep.groupby("config_key").tail(window)
    stats = recent.groupby("config_key").agg(baseline=("value", "median"), nights=("value", "size"),
                                              latest_sweep=("sweep_id", "last"))
    deviation = (recent.value - recent.config_key.map(stats.baseline)).abs()
    stats["noise"] = 1.4826 * deviation.groupby(recent.config_key).median()
    varying, labels = configuration_labels(current, shown=("model", "strategy", "optimizer", "precision", "world_size"))
    current = current.assign(configuration=labels if varying else "")
    rows = current.dropna(subset=[metric]).join(stats, on="config_key", how="inner")
    rows["value"] = rows[metric]
    rows["allowed_drop"] = (min_drop * rows.baseline).where(
        min_drop * rows.baseline >= noise_sigmas * rows.noise, noise_sigmas * rows.noise)
    rows["allowed_drop"] = rows.allowed_drop.clip(upper=max(max_allowed_drop, min_drop) * rows.baseline)
    rows["change"] = (rows.value - rows.baseline) / rows.baseline
    rows["verdict"] = "unchanged"
    below, above = rows.value < rows.baseline - rows.allowed_drop, rows.value > rows.baseline + rows.allowed_drop
    higher_is_better = BY_NAME[metric].higher_is_better is not False  # the registry says which way
    rows.loc[below if higher_is_better else above, "verdict"] = "regression"
    rows.loc[above if higher_is_better else below, "verdict"] = "improvement"
    latest = past.drop_duplicates(["config_key", "sweep_id"], keep="last").set_index(["config_key", "sweep_id"])
    rows["what_changed"] = [
        environment_diff(latest.loc[(r.config_key, r.latest_sweep)], r) if r.verdict != "unchanged" else ""
        for r in rows.itertuples()]
    return rows.reset_index(drop=True)[REGRESSION_COLUMNS]


REGRESSION_COLUMNS = ["model", "strategy", "optimizer", "precision", "world_size", "configuration", "config_key",
                      "value", "baseline", "noise", "allowed_drop", "change", "nights", "verdict",
                      "what_changed"]


def environment_diff(before, after) -> str:
    """'field: old -> new' for every environment field that differs (rows or named tuples);
    per-job values (PER_JOB_VARIABLES) are no change."""
    changes = []
    for column in ENV_FIELDS:
        old, new = getattr(before, column, None), getattr(after, column, None)
        if column == "env_variables":
            # a record without variables (pd.NA in the frame, whose truth value is an error)
            old_vars, new_vars = ({} if _missing(v) else json.loads(v) for v in (old, new))
            for name in sorted(set(old_vars) | set(new_vars)):
                if PER_JOB_VARIABLES.fullmatch(name) or old_vars.get(name) == new_vars.get(name):
                    continue
                changes.append(f"{name}: {old_vars.get(name)} -> {new_vars.get(name)}")
            continue
        if _missing(old) and _missing(new):
            continue
        if str(old) != str(new):
            changes.append(f"{column.removeprefix('env_')}: {old} -> {new}")
    return "; ".join(changes)


def _missing(value: Optional[object]) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value))


def trends(history: pd.DataFrame, metric: str = "tokens_per_s_per_device") -> Dict[str, pd.DataFrame]:
    """Per model: one column per configuration (named by the axes that vary in the model's
    history; configurations that no axis tells apart carry their key), one row per sweep (its
    median), in time order."""
    out = {}
    for model, group in history.groupby("model"):
        configs = group.drop_duplicates("config_key", keep="last")
        names = configuration_labels(configs, shown=("model",))[1]
        shared = names.duplicated(keep=False)
        names = names.where(~shared, names + " #" + configs.config_key.str[:6])
        label = group.config_key.map(dict(zip(configs.config_key, names)))
        out[model] = group.assign(label=label).pivot_table(index="sweep_date", columns="label", values=metric,
                                                           aggfunc="median").sort_index()
    return out


def measured_ceilings(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the sweep's micro-benchmark runs: one per GEMM shape or collective size."""
    rows = []
    for _, r in frame[(frame.workload != "train") & (frame.status == "ok")].iterrows():
        micro = json.loads(r.micro_json) if isinstance(r.micro_json, str) else {}
        for row in micro.get("gemm", []):
            rows.append({"kind": "gemm", "device": r.env_device_name, "world_size": r.world_size, **row})
        for row in micro.get("collectives", []):
            rows.append({"kind": "collective", "device": r.env_device_name, "world_size": r.world_size, **row})
    return pd.DataFrame(rows)


MICRO_WORKLOADS = ("gemm", "allreduce", "preflight")
PREFLIGHT_COLUMNS = ["host", "runs", "gemm_tflops", "gemm_vs_others", "busbw_gbps", "busbw_vs_others",
                     "threshold", "flagged"]
TOGETHER_COLUMNS = ["run_id", "nodes", "world_size", "busbw_intra_node_gbps", "busbw_inter_node_gbps"]


def _all_reduce_peak(rows: List[dict], scope: str) -> Optional[float]:
    row = _all_reduce_peak_row(rows, scope)
    return row["busbw_gbps"] if row else None


def _all_reduce_peak_row(rows: List[dict], scope: str) -> Optional[dict]:
    candidates = [r for r in rows if r.get("op") == "all_reduce" and r.get("scope") == scope]
    return max(candidates, key=lambda r: r["busbw_gbps"]) if candidates else None


def _round_noise(row: dict) -> Optional[float]:
    """The relative standard error of a point's median over its n interleaved rounds,
    1.2533 x CV / sqrt(n) (the median's asymptotic error for normal noise); None for a row of
    one round or from before rounds were kept."""
    times = row.get("round_times_s") or []
    return 1.2533 * _cv(times) / len(times) ** 0.5 if len(times) > 1 and _cv(times) is not None else None


def _first(values: List[Optional[float]]) -> Optional[float]:
    return values[0] if values else None


def _cv(values: List[float]) -> Optional[float]:
    series = pd.Series(values, dtype=float)
    return float(series.std() / series.mean()) if len(series) > 1 and series.mean() else None


def node_preflight(frame: pd.DataFrame, tolerance: float, noise_sigmas: float
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cluster acceptance check from the sweep's micro-benchmark runs. Per node (its 1-node
    runs): the GEMM ceiling (largest TFLOP/s of any shape and dtype) and the all_reduce bus
    bandwidth among its own ranks (peak over sizes), medians over its runs, each as a share of
    the median of the other nodes. A node is flagged when a share falls below 1 - threshold,
    threshold = max(tolerance, noise_sigmas x the figure's noise: the median over nodes of each
    node's coefficient of variation across its repeated runs, or, for a node with one run, the
    standard error of that run's median over its interleaved rounds (`_round_noise`)).
    Together (runs over several nodes): the all_reduce bus bandwidth inside a node and across
    nodes. Empty unless 2+ nodes ran alone."""
    per_host, together = {}, []
    runs = frame[frame.workload.isin(MICRO_WORKLOADS) & (frame.status == "ok")]
    for r in runs.dropna(subset=["per_rank_json", "micro_json"]).itertuples():
        hosts = json.loads(r.per_rank_json).get("hosts") or []
        micro = json.loads(r.micro_json)
        gemm = [row["tflops"] for row in micro.get("gemm", [])]
        collectives = micro.get("collectives", [])
        if len(set(hosts)) == 1:
            figures = per_host.setdefault(hosts[0], {"runs": 0, "gemm": [], "busbw": [],
                                                     "gemm_rounds": [], "busbw_rounds": []})
            figures["runs"] += 1
            if gemm:
                best = max(micro["gemm"], key=lambda row: row["tflops"])
                figures["gemm"].append(best["tflops"])
                figures["gemm_rounds"].append(_round_noise(best))
            peak = _all_reduce_peak_row(collectives, "intra_node") if len(hosts) > 1 else None
            if peak is not None:
                figures["busbw"].append(peak["busbw_gbps"])
                figures["busbw_rounds"].append(_round_noise(peak))
        elif collectives:
            together.append({"run_id": r.run_id, "nodes": len(set(hosts)), "world_size": len(hosts),
                             "busbw_intra_node_gbps": _all_reduce_peak(collectives, "intra_node"),
                             "busbw_inter_node_gbps": _all_reduce_peak(collectives, "inter_node")})
    together = pd.DataFrame(together, columns=TOGETHER_COLUMNS)
    if len(per_host) < 2:
        return pd.DataFrame(columns=PREFLIGHT_COLUMNS), together
    hosts = sorted(per_host)
    nodes = pd.DataFrame({"host": hosts, "runs": [per_host[h]["runs"] for h in hosts]})
    thresholds = []
    for figure, column in (("gemm", "gemm_tflops"), ("busbw", "busbw_gbps")):
        nodes[column] = [pd.Series(per_host[h][figure], dtype=float).median() for h in hosts]
        nodes[f"{figure}_vs_others"] = [
            nodes[column][i] / nodes[column].drop(index=i).median() for i in range(len(hosts))]
        noise = pd.Series([_cv(per_host[h][figure]) if per_host[h]["runs"] > 1
                           else _first(per_host[h][f"{figure}_rounds"]) for h in hosts], dtype=float).median()
        thresholds.append(max(tolerance, noise_sigmas * noise) if pd.notna(noise) else tolerance)
        nodes[f"{figure}_threshold"] = thresholds[-1]
    nodes["threshold"] = [f"GEMM {thresholds[0]:.0%}, busbw {thresholds[1]:.0%}"] * len(hosts)
    nodes["flagged"] = ((nodes.gemm_vs_others < 1 - nodes.gemm_threshold)
                        | (nodes.busbw_vs_others < 1 - nodes.busbw_threshold))
    return nodes[PREFLIGHT_COLUMNS], together


def of_gemm_ceiling(configs: pd.DataFrame, ceilings: pd.DataFrame) -> pd.Series:
    """Each configuration's TFLOP/s per device over the sweep's measured GEMM ceiling for its
    dtype (the largest of the sweep's workload=gemm runs); null without such a run."""
    best = (ceilings[ceilings.kind == "gemm"].groupby("dtype").tflops.max()
            if "dtype" in ceilings else pd.Series(dtype=float))
    return pd.Series([r.tflops_per_device / best[r.precision] if r.precision in best else None
                      for r in configs.itertuples()], index=configs.index, dtype="float64")


# Shares of a ceiling: above 1 they cannot be true (a wrong peak, a clock that missed work).
CEILING_SHARES = {"mfu": "MFU", "hfu": "HFU", "of_gemm_ceiling": "of GEMM ceiling"}


def measurement_errors(configs: pd.DataFrame) -> pd.Series:
    """Per configuration, the shares of a ceiling above 100% ('MFU, HFU'), else ''. The report
    shows such a figure as a measurement error, never as a result."""
    def flagged(row) -> str:
        return ", ".join(label for column, label in CEILING_SHARES.items()
                         if column in row and implausible(row[column]))
    if configs.empty:
        return pd.Series(dtype="string")
    return configs.apply(flagged, axis=1).astype("string")


def unknown_gpus(frame: pd.DataFrame) -> List[str]:
    """GPU names of the sweep's runs that the peak table does not know (their MFU is null)."""
    # ok runs only: a run that failed before it saw a GPU records the host's CPU name
    gpu = frame[(frame.accelerator == "cuda") & (frame.status == "ok") & frame.env_device_name.notna()]
    return sorted({name for name in gpu.env_device_name if device_key(name) is None})


def parity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs in parity mode against DeepSpeed's plain data-parallel run (ZeRO 0, no TP/PP/SP/offload) of
    the same model, optimizer, precision, global batch and world size: the largest per-step loss
    difference, the precision's tolerance, and the verdict (yes, NO, run failed, no ddp run, or
    "no comparable ddp run: ..." naming the reference's global batch or world size and the
    override that makes them comparable: _no_reference)."""
    columns = ["model", "strategy", "optimizer", "precision", "activation_checkpointing",
               "data_parallel", "tensor_parallel", "pipeline_parallel", "sequence_parallel",
               "configuration", "max_abs_diff", "tolerance", "matches"]
    runs = frame[frame.check_parity.fillna(False).astype(bool)]
    varying, labels = configuration_labels(runs, shown=columns[:9])  # the other axes that vary
    runs = runs.assign(configuration=labels if varying else "")
    rows = []
    keys = ["model", "optimizer", "precision", "global_batch_size", "world_size"]
    references = runs[_plain_data_parallel(runs) & (runs.status == "ok")]
    for _, group in runs.groupby(keys, dropna=False):
        plain = group[_plain_data_parallel(group) & (group.status == "ok")]
        # recomputation does not change the maths: prefer the run without it, take any
        plain = plain.sort_values("activation_checkpointing", key=lambda c: c != "none", kind="stable")
        reference = json.loads(plain.iloc[0].loss_per_step_json) if len(plain) else None
        for _, r in group.iterrows():
            losses = json.loads(r.loss_per_step_json) if r.status == "ok" else None
            diff = tol = None
            if reference is None or losses is None:
                verdict = "run failed" if losses is None else _no_reference(r, references)
            else:
                result = loss_parity(losses, reference, r.precision)
                verdict = "yes" if result["matches"] else "NO"
                diff, tol = result["max_abs_diff"], result["tolerance"]
            rows.append({**{c: r[c] for c in columns[:10]}, "max_abs_diff": diff, "tolerance": tol,
                         "matches": verdict})
    return pd.DataFrame(rows, columns=columns)


def _plain_data_parallel(runs: pd.DataFrame) -> pd.Series:
    """DeepSpeed's plain data-parallel runs: ZeRO 0, no TP/PP/SP, no offload."""
    return ((runs.engine.fillna("deepspeed") == "deepspeed") & (runs.zero_stage == 0)
            & (runs.tensor_parallel == 1) & (runs.pipeline_parallel == 1)
            & (runs.sequence_parallel.fillna(1) == 1) & ~runs.offload_optimizer.fillna(False).astype(bool))


def _no_reference(run, references: pd.DataFrame) -> str:
    """Why a parity run has no reference: no plain data-parallel run of its model, optimizer
    and precision at all, or one at another global batch or world size, and the override that
    makes them comparable."""
    same = references[(references.model == run.model) & (references.optimizer == run.optimizer)
                      & (references.precision == run.precision)]
    if same.empty:
        return "no ddp run"
    ref = same.iloc[0]
    apart, overrides = [], []
    if pd.notna(ref.global_batch_size) and ref.global_batch_size != run.global_batch_size:
        apart.append(f"ddp ran at global batch {ref.global_batch_size:.0f}; this layout at "
                     f"{_axis_value(run.global_batch_size)}")
        overrides.append(f"train.global_batch_size={ref.global_batch_size:.0f}")
    if pd.notna(ref.world_size) and ref.world_size != run.world_size:
        apart.append(f"ddp ran on {ref.world_size:.0f} ranks; this layout on {_axis_value(run.world_size)}")
    text = "no comparable ddp run: " + "; ".join(apart or ["ddp's run differs"])
    return text + (f": set {' '.join(overrides)}" if overrides else "")


# DeepSpeed and its PyTorch counterpart: (DeepSpeed's ZeRO stage, torch engine, label)
ENGINE_PAIRS = ((0, "torch_ddp", "ZeRO-0 vs torch DDP"), (3, "fsdp2", "ZeRO-3 vs FSDP2"))
# What must be equal for two runs to be compared side by side
SAME_WORK = ["model", "world_size", "nodes", "precision", "optimizer", "micro_batch_size",
             "grad_accum_steps", "activation_checkpointing"]
ENGINE_COLUMNS = ["model", "world_size", "nodes", "precision", "optimizer", "micro_batch_size", "pair",
                  "deepspeed_tokens_per_s_per_device", "torch_tokens_per_s_per_device", "throughput_ratio",
                  "deepspeed_peak_memory_bytes", "torch_peak_memory_bytes", "memory_ratio",
                  "deepspeed_settings", "torch_settings"]


def engine_settings(engine: Optional[str], zero_stage: Optional[float], config_json: Optional[str]) -> str:
    """What overlaps communication with compute in a run, as its engine was configured: for
    DeepSpeed the ZeRO block's overlap_comm (its own default where the sweep left it null) and
    stage 3's prefetch bucket; for FSDP2 resharding and its implicit prefetch; for torch DDP
    its bucketed all-reduce during backward."""
    strategy = (json.loads(config_json) if isinstance(config_json, str) and config_json else {}).get("strategy") or {}
    engine = engine if isinstance(engine, str) and engine else strategy.get("engine", "deepspeed")
    stage = int(zero_stage) if pd.notna(zero_stage) else strategy.get("zero_stage", 0)
    if engine == "fsdp2":
        reshard = "on" if strategy.get("fsdp_reshard_after_forward", True) else "off"
        return (f"reshard_after_forward {reshard}; prefetch: FSDP2's default (the next unit's "
                "all-gather overlaps the current unit, forward and backward)")
    if engine == "torch_ddp":
        return "all-reduce in 25 MiB buckets during backward (DDP's default)"
    if stage == 0:
        return "ZeRO-0: one all-reduce of the gradients after backward"
    overlap = strategy.get("overlap_comm")
    overlap = (stage == 3) if overlap is None else bool(overlap)
    text = f"overlap_comm {'on' if overlap else 'off'}"
    if stage == 3:
        text += f", prefetch bucket {float(strategy.get('stage3_prefetch_bucket_size', 0)):.3g} elements"
    return text


def engine_comparison(configs: pd.DataFrame) -> pd.DataFrame:
    """DeepSpeed beside PyTorch for the same work (model, ranks, precision, optimizer, batch,
    recomputation): ZeRO-3 against FSDP2 and ZeRO-0 (plain data parallel) against torch DDP,
    with torch / DeepSpeed ratios of tokens/s per device and of peak memory (medians over
    repeats). Only plain layouts pair up: no TP/PP/SP, no offload."""
    if configs.empty or "engine" not in configs:
        return pd.DataFrame(columns=ENGINE_COLUMNS)
    plain = configs[(configs.tensor_parallel == 1) & (configs.pipeline_parallel == 1)
                    & (configs.sequence_parallel.fillna(1) == 1)
                    & ~configs.offload_optimizer.fillna(False).astype(bool)
                    & ~configs.offload_params.fillna(False).astype(bool)]
    engine = plain.engine.fillna("deepspeed")
    rows = []
    for stage, torch_engine, label in ENGINE_PAIRS:
        ds = plain[(engine == "deepspeed") & (plain.zero_stage == stage)]
        pt = plain[engine == torch_engine]
        for _, t in pt.iterrows():
            same = ds
            for key in SAME_WORK:
                same = same[same[key].astype("string").fillna("") == ("" if pd.isna(t[key]) else str(t[key]))]
            if same.empty:
                continue
            d = same.iloc[0]
            rows.append({**{k: t[k] for k in SAME_WORK[:6]}, "pair": label,
                         "deepspeed_tokens_per_s_per_device": d.tokens_per_s_per_device,
                         "torch_tokens_per_s_per_device": t.tokens_per_s_per_device,
                         "throughput_ratio": t.tokens_per_s_per_device / d.tokens_per_s_per_device,
                         "deepspeed_peak_memory_bytes": d.peak_memory_bytes,
                         "torch_peak_memory_bytes": t.peak_memory_bytes,
                         "memory_ratio": (t.peak_memory_bytes / d.peak_memory_bytes
                                          if pd.notna(d.peak_memory_bytes) and d.peak_memory_bytes else None),
                         "deepspeed_settings": engine_settings("deepspeed", d.zero_stage, d.get("config_json")),
                         "torch_settings": engine_settings(t.engine, None, t.get("config_json"))})
    return pd.DataFrame(rows, columns=ENGINE_COLUMNS)
