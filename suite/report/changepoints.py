"""Change points in the nightly history, two ways, on one configuration's series of nightly
values (oldest first): Apache Otava's E-Divisive with t-tests (Fleming et al.'s Hunter, after
MongoDB's change-point detection), and the suite's own rule, `analysis.regressions`
(median/MAD of the last `window` nights), applied night by night. Pure: lists and frames in,
results out (numpy, pandas and otava only). bench/changepoint_error_rates.py measures the
error rates of both; bench/RESULTS.md has its figures."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import pandas as pd

from suite.report.analysis import regressions

METHODS = ("otava", "median_mad")
# bench/changepoint_error_rates.py measured both against the targets (at most 5% of noise-only
# series alerted; a sustained 5% drop at 2% noise found within 3 nights in 90% of series):
# neither meets both; Otava with the parameters below comes closest and does as well as or
# better than the median/MAD rule on every target figure (bench/RESULTS.md, "Change-point
# detection: error rates"), so it is the default.
DEFAULT_METHOD = "otava"
# Otava's parameters, chosen on the benchmark's tuning seed (not the reported one): the
# sliding window of its split step (nights), the largest p-value of a change point's t-test,
# and the smallest relative change it must have. A larger p-value finds drops sooner and
# alerts on noise more often (0.001: 90% found within 3 nights, 9% of noise-only series at 5%
# noise alerted).
OTAVA_WINDOW = 30
OTAVA_MAX_PVALUE = 0.0005
OTAVA_MIN_MAGNITUDE = 0.04


@dataclass(frozen=True)
class Change:
    """A change point: `index` is the first night after the change (0 = the oldest night),
    `change` = mean after / mean before - 1 (the means of the stretches between neighbouring
    change points), `pvalue` the t-test's (None for the median/MAD rule)."""
    index: int
    change: float
    before: float
    after: float
    pvalue: Optional[float]


def otava_changes(values: Sequence[float], window: int = OTAVA_WINDOW, max_pvalue: float = OTAVA_MAX_PVALUE,
                  min_magnitude: float = OTAVA_MIN_MAGNITUDE) -> List[Change]:
    """Otava's change points of one series (oldest first), in time order. A change point must
    pass both the t-test (p < max_pvalue) and the size (max(|after/before - 1|, |before/after -
    1|) > min_magnitude): Otava's merge step drops a point that fails either."""
    # A list, not a numpy array: otava 0.8's split step slices series[start:end] only when it
    # is not an ndarray, yet shifts the indices by start either way, so an array longer than
    # the window gives wrong indices or a ValueError.
    series = [float(v) for v in values]
    if not all(math.isfinite(v) for v in series):
        raise ValueError("otava_changes: every night needs a finite value")
    if len(series) < 2:
        return []
    low, high = min(series), max(series)
    if low > 0 and high / low - 1 <= min_magnitude:
        # exact: every segment's mean lies in [low, high], so no two differ by more than
        # high / low - 1, and Otava would drop every point for its size (a steady series costs
        # neither Otava's E-divisive nor, where all are steady, its import)
        return []
    # imported here: otava brings scipy.stats (~0.6 s), which a report without a history never needs
    from otava.analysis import compute_change_points

    points, _weak = compute_change_points(series, window_len=window, max_pvalue=max_pvalue,
                                          min_magnitude=min_magnitude)
    return [Change(index=int(p.index), change=float(p.stats.forward_rel_change()),
                   before=float(p.stats.mean_before()), after=float(p.stats.mean_after()),
                   pvalue=float(p.stats.pvalue)) for p in points]


def median_mad_verdicts(series: Sequence[Sequence[float]], *, metric: str = "tokens_per_s_per_device",
                        window: int = 7, min_drop: float = 0.05, noise_sigmas: float = 3.0,
                        max_allowed_drop: float = 0.5, chunk: int = 200) -> pd.DataFrame:
    """The suite's nightly rule (`analysis.regressions`, called as the report calls it) on each
    of several plain series, night by night: night t of a series against its nights before t
    only. One row per series and night t >= 1: series, night, verdict ('regression',
    'improvement', 'unchanged'), value, baseline, allowed_drop, change.

    Each (series, night t) is a configuration of its own whose history is the series' nights
    before t and whose current sweep is night t, so one call of the rule judges every night of
    `chunk` series at once (the rule itself picks the last `window` nights; a call per night
    costs ~0.1 s of pandas overhead, too much for thousands of series)."""
    columns = ["series", "night", "verdict", "value", "baseline", "allowed_drop", "change"]
    out = []
    for first in range(0, len(series), chunk):
        past, current = [], []
        for s, values in enumerate(series[first:first + chunk], first):
            values = [float(v) for v in values]
            for t in range(1, len(values)):
                key = f"{s}:{t}"
                past += [(key, f"night{k}", k, values[k]) for k in range(t)]
                current.append((key, "tonight", t, values[t]))
        if not current:
            continue
        frames = [pd.DataFrame(rows, columns=["config_key", "sweep_id", "night", metric])
                  for rows in (past, current)]
        for frame in frames:  # nights in time order, one a day; the columns the verdicts name
            frame["finished_at"] = (pd.Timestamp("2000-01-01") + pd.to_timedelta(frame.night, unit="D")
                                    ).dt.strftime("%Y-%m-%dT%H:%M:%S")
            frame[["model", "strategy", "optimizer", "precision"]] = ""
            frame["world_size"] = 0
        judged = regressions(frames[1], frames[0], metric=metric, window=window, min_drop=min_drop,
                             noise_sigmas=noise_sigmas, max_allowed_drop=max_allowed_drop)
        where = judged.config_key.str.split(":", expand=True).astype(int)
        out.append(judged.assign(series=where[0], night=where[1])[columns])
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True).sort_values(["series", "night"], ignore_index=True)


def median_mad_flags(values: Sequence[float], **rule) -> List[Optional[str]]:
    """The suite's nightly rule on one series, night by night: the verdict of each night
    against the nights before it (None for the first night, which has none). `rule`: metric,
    window, min_drop, noise_sigmas, max_allowed_drop of `analysis.regressions`."""
    judged = median_mad_verdicts([values], **rule).set_index("night").verdict
    return [judged.get(t) if t else None for t in range(len(values))]


CHANGE_COLUMNS = ["config_key", "model", "strategy", "optimizer", "precision", "world_size", "nights",
                  "first_sweep_date", "last_sweep_date", "method", "change_sweep_id", "change_sweep_date",
                  "nights_since", "change", "before", "after", "pvalue"]


def nightly_series(history: pd.DataFrame, metric: str = "tokens_per_s_per_device") -> pd.DataFrame:
    """One row per configuration and sweep (ok runs with the metric): the median over its
    repeats, the sweep's date, in time order (finished_at, as `analysis.regressions` orders)."""
    frame = history
    if "status" in frame:
        frame = frame[frame.status == "ok"]
    frame = frame.dropna(subset=[metric])
    if "sweep_date" not in frame:
        frame = frame.assign(sweep_date=None)
    if "finished_at" not in frame:
        frame = frame.assign(finished_at=frame.sweep_date)
    return (frame.groupby(["config_key", "sweep_id"], sort=False, dropna=False)
            .agg(value=(metric, "median"), finished_at=("finished_at", "max"), sweep_date=("sweep_date", "first"))
            .reset_index().sort_values(["config_key", "finished_at", "sweep_id"], kind="stable"))


def otava_nights(window: int, otava_window: int = OTAVA_WINDOW, min_nights: int = 6) -> int:
    """How many of a configuration's latest nights the nightly verdict (`decide`) runs Otava on:
    otava_window + window. `decide` reads only Otava's latest change point and whether it
    started within the last `window` nights (an older one, or none, is 'unchanged'), and Otava
    judges a night from the nights around it inside its sliding window of otava_window nights;
    so the series ends tonight and gives the oldest night that can still be news a whole
    window of nights before it. The nights before those can change the verdict only through
    where Otava's windows fall and the stretch its t-test takes back to the previous change
    point: a series of 1,000 nights took 67 windows a configuration, these take 3, and the
    verdict is Otava's on the last otava_window + window nights (bench/RESULTS.md, 'Report speed
    over a long history': how often it differs from Otava's over the whole series). At least `min_nights`
    (otava_min_nights), so that a configuration with enough nights is judged by Otava."""
    return max(otava_window + window, min_nights)


def changes_per_configuration(history: pd.DataFrame, method: str = DEFAULT_METHOD, *,
                              metric: str = "tokens_per_s_per_device",
                              window: int = 7, min_drop: float = 0.05, noise_sigmas: float = 3.0,
                              max_allowed_drop: float = 0.5, otava_window: int = OTAVA_WINDOW,
                              max_pvalue: float = OTAVA_MAX_PVALUE,
                              min_magnitude: float = OTAVA_MIN_MAGNITUDE,
                              last_nights: Optional[int] = None,
                              config_keys: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per configuration of a history frame (`history.load`'s columns; the current sweep may be
    among them; only `config_keys`, where given): its nights (its last `last_nights`, where
    given: the series the method runs on and `nights` counts), and the latest change with the
    night it started and its size. otava: the last of Otava's change points over those nights;
    before/after are the means of the stretches either side, pvalue the t-test's. median_mad:
    the suite's rule night by night; the latest run of nights flagged the same way starts the
    change, its change is that night's against the baseline (before) and pvalue is null. No
    change: the change columns are null."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if config_keys is not None and not history.empty:
        history = history[history.config_key.isin(set(config_keys))]
    if history.empty:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    nights = nightly_series(history, metric)
    if last_nights is not None:
        nights = nights.groupby("config_key", sort=False).tail(last_nights)
    # plain lists per configuration: pandas' row access costs ~1 ms a configuration
    keys = list(dict.fromkeys(nights.config_key))
    columns = {c: nights[c].tolist() for c in ("value", "sweep_id", "sweep_date")}
    per_key = {key: {c: [columns[c][i] for i in where] for c in columns}
               for key, where in nights.groupby("config_key", sort=False).indices.items()}
    latest = {}
    if method == "otava":
        for key in keys:
            found = otava_changes(per_key[key]["value"], window=otava_window, max_pvalue=max_pvalue,
                                  min_magnitude=min_magnitude)
            if found:
                c = found[-1]
                latest[key] = (c.index, c.change, c.before, c.after, c.pvalue)
    else:
        judged = median_mad_verdicts([per_key[key]["value"] for key in keys], metric=metric,
                                     window=window, min_drop=min_drop, noise_sigmas=noise_sigmas,
                                     max_allowed_drop=max_allowed_drop)
        for s, verdicts in judged.groupby("series"):
            verdicts = verdicts.sort_values("night").reset_index(drop=True)
            flagged = verdicts[verdicts.verdict != "unchanged"]
            if flagged.empty:
                continue
            start = flagged.index[-1]  # back to the first night of the latest run of the same flag
            while start > 0 and verdicts.verdict[start - 1] == verdicts.verdict[start]:
                start -= 1
            r = verdicts.loc[start]
            latest[keys[s]] = (int(r.night), float(r.change), float(r.baseline), float(r.value), None)
    about = history.drop_duplicates("config_key", keep="last")
    described = {r["config_key"]: r for r in
                 about[["config_key"] + [c for c in CHANGE_COLUMNS[1:6] if c in about]].to_dict("records")}
    rows = []
    for key in keys:
        series = per_key[key]
        row = {"config_key": key, **{c: described.get(key, {}).get(c) for c in CHANGE_COLUMNS[1:6]},
               "nights": len(series["value"]), "first_sweep_date": series["sweep_date"][0],
               "last_sweep_date": series["sweep_date"][-1], "method": method, "change_sweep_id": None,
               "change_sweep_date": None, "nights_since": None, "change": None, "before": None, "after": None,
               "pvalue": None}
        if key in latest:
            index, change, before, after, pvalue = latest[key]
            row.update(change_sweep_id=series["sweep_id"][index], change_sweep_date=series["sweep_date"][index],
                       nights_since=len(series["value"]) - 1 - index,  # 0: the change started on the latest night
                       change=change, before=before, after=after, pvalue=pvalue)
        rows.append(row)
    out = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    for column in ("change", "before", "after", "pvalue"):
        out[column] = out[column].astype("float64")
    return out


def decide(regress: pd.DataFrame, changes: pd.DataFrame, method: str, *, min_nights: int,
           recent_nights: int) -> pd.DataFrame:
    """The nightly verdicts of the current sweep's configurations: `regress` (the median/MAD
    rule, `analysis.regressions`) with Otava's latest change beside it (`changes`:
    `changes_per_configuration(..., "otava")`), and `verdict` from `method`. Otava decides a
    configuration with at least `min_nights` nights: a regression (improvement) when its latest
    change point is a drop (rise) that started within the last `recent_nights` nights, so a
    change is reported while it is news, not forever; with fewer nights, or method median_mad,
    the median/MAD verdict stands. Adds median_mad_verdict, otava (text), method."""
    out = regress.copy()
    out["median_mad_verdict"] = out.verdict
    # dictionaries, not .loc per row: ~1.5 ms a configuration in pandas' row access
    by_key = {c["config_key"]: c for c in changes.to_dict("records")} if len(changes) else {}
    otava_text, used, verdicts = [], [], []
    for key, verdict in zip(out.config_key.tolist(), out.verdict.tolist()):
        c = by_key.get(key)
        found = c is not None and pd.notna(c["change"])
        otava_text.append(f"{c['change']:+.1%} from {c['change_sweep_date']} ({int(c['nights_since'])} nights "
                          f"ago, p {c['pvalue']:.1g})" if found else "no change point")
        if method == "otava" and c is not None and c["nights"] >= min_nights:
            recent = found and c["nights_since"] < recent_nights
            verdict = ("regression" if recent and c["change"] < 0 else
                       "improvement" if recent and c["change"] > 0 else "unchanged")
            used.append("otava")
        else:
            used.append("median/MAD" + (f" (fewer than {min_nights} nights)" if method == "otava" else ""))
        verdicts.append(verdict)
    return out.assign(verdict=pd.Series(verdicts, index=out.index, dtype=out.verdict.dtype) if len(out)
                      else out.verdict, otava=otava_text, method=used)
