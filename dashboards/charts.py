"""The dashboard's charts: trends with mode-aware normal bands, anomaly shading and alarm markers,
and the evidence chart of a diagnosis. Pure functions from store data to Altair (Vega-Lite) charts,
so they are tested without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from dashboards.words import plant_units, signal_words
from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm, Anomaly, Priority
from factory_copilot.store import Store

# ISA-18.2 style: critical red, high orange, medium yellow, low cyan
PRIORITY_COLOURS = {
    Priority.CRITICAL: "#d62728",
    Priority.HIGH: "#ff7f0e",
    Priority.MEDIUM: "#f2c80f",
    Priority.LOW: "#17becf",
}
BAND_COLOUR = "#2ca02c"
LINE_COLOUR = "#1f4e79"
ANOMALY_COLOUR = "#d62728"


def _times(ts: pd.Series) -> pd.Series:
    # Vega-Lite shows naive datetimes as they are: the dashboard labels its axes UTC
    return pd.to_datetime(ts, unit="s", utc=True).dt.tz_localize(None)


def signal_frame(store: Store, line: LineConfig, asset: str, since: float, until: float,
                 signals: Sequence[str] | None = None) -> pd.DataFrame:
    """Trend of an asset's signals with the normal band for the mode the line was in at each sample.

    Columns: ts, time, signal, unit, mean, min, max, lo, hi, out (mean outside the band), state (for the line's
    mode signal: the mode's name, else None).
    """
    wanted = list(signals) if signals else [s.name for s in line.asset(asset).signals]
    frame = store.trend(asset, since, until, signals=wanted)
    if frame.empty:
        return frame.assign(time=pd.Series(dtype="datetime64[ns]"), unit="", lo=0.0, hi=0.0, out=False, state=None)
    frame = frame.sort_values("ts").reset_index(drop=True)
    modes = _mode_series(store, line, since, until)
    if modes.empty:
        frame["mode"] = line.production_mode
    else:
        frame = pd.merge_asof(frame, modes, on="ts", direction="backward")
        frame["mode"] = frame["mode"].fillna(modes["mode"].iloc[0])
    spec = {s.name: s for s in line.asset(asset).signals}
    bands = {
        (name, m): spec[name].normal_for(m) for name in frame["signal"].unique() if name in spec for m in line.mode_names()
    }
    frame["lo"] = [bands.get((s, m), (float("nan"),) * 2)[0] for s, m in zip(frame["signal"], frame["mode"])]
    frame["hi"] = [bands.get((s, m), (float("nan"),) * 2)[1] for s, m in zip(frame["signal"], frame["mode"])]
    frame["unit"] = [spec[s].unit if s in spec else "" for s in frame["signal"]]
    frame["out"] = (frame["mean"] < frame["lo"]) | (frame["mean"] > frame["hi"])
    frame["time"] = _times(frame["ts"])
    # the mode signal reads as the line's own mode names, not as the codes that carry them
    is_mode = [f"{asset}.{s}" == line.mode_key for s in frame["signal"]]
    frame["state"] = [line.mode_of(v) if m and line.modes is not None else None for v, m in zip(frame["mean"], is_mode)]
    return frame


def _mode_series(store: Store, line: LineConfig, since: float, until: float) -> pd.DataFrame:
    """The line's operating mode over time (from the mode signal), as columns ts, mode."""
    if line.mode_key is None:
        return pd.DataFrame(columns=["ts", "mode"])
    # look back a while so the mode in force at ``since`` is known
    asset, _, signal = line.mode_key.partition(".")
    raw = store.trend(asset, since - 3600, until, signals=[signal])
    raw = raw.dropna(subset=["mean"]).sort_values("ts")
    modes, current = [], None
    for v in raw["mean"]:
        current = line.mode_of(v, current) or current
        modes.append(current)
    raw = raw.assign(mode=modes).dropna(subset=["mode"])
    if raw.empty:
        return pd.DataFrame(columns=["ts", "mode"])
    return pd.DataFrame({"ts": raw["ts"].astype(float), "mode": raw["mode"].astype(str)})


def anomaly_windows(anomalies: Sequence[Anomaly], gap_s: float = 15.0) -> pd.DataFrame:
    """Anomalies merged into shaded windows: columns start, end, what, peak (score/threshold)."""
    rows: list[dict] = []
    for a in sorted(anomalies, key=lambda a: a.ts):
        what = a.fault_type or (f"{signal_words(a.signal)} {a.kind}" if a.signal else a.kind)
        ratio = a.score / a.threshold if a.threshold else 1.0
        if rows and a.ts - rows[-1]["end_ts"] <= gap_s:
            rows[-1]["end_ts"] = a.ts
            rows[-1]["peak"] = max(rows[-1]["peak"], ratio)
            if what not in rows[-1]["what"]:
                rows[-1]["what"] += f", {what}"
        else:
            rows.append({"start_ts": a.ts, "end_ts": a.ts, "what": what, "peak": ratio})
    frame = pd.DataFrame(rows, columns=["start_ts", "end_ts", "what", "peak"])
    # a lone anomaly still gets a visible stripe
    frame["end_ts"] = frame[["start_ts", "end_ts"]].max(axis=1).where(
        frame["end_ts"] > frame["start_ts"], frame["start_ts"] + 2.0)
    frame["start"] = _times(frame["start_ts"])
    frame["end"] = _times(frame["end_ts"])
    return frame


def alarm_marks(alarms: Sequence[Alarm]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [{"ts": a.raised_at, "alarm": plant_units(a.message or a.condition), "priority": a.priority.name.lower(),
          "colour": PRIORITY_COLOURS[a.priority], "state": a.state.value.replace("_", " ")} for a in alarms],
        columns=["ts", "alarm", "priority", "colour", "state"],
    )
    frame["time"] = _times(frame["ts"])
    return frame


def signal_charts(frame: pd.DataFrame, windows: pd.DataFrame | None = None, alarms: pd.DataFrame | None = None,
                  height: int = 110, modes: Sequence[str] | None = None) -> list[alt.LayerChart]:
    """One small chart per signal, on a common time axis (time labels on the last one only).

    Green band: normal for the mode the line was in; blue line: bucket mean with
    its min-max envelope; red dots: samples outside the band; red shading:
    anomaly windows; dashed rules: alarms raised, in their priority colour.
    Separate charts (not a vconcat) so each stretches to the page's width. The line's mode signal is drawn
    as its mode names over time (``modes``: their order on the axis), never as a code like 2.000000.
    """
    charts = []
    signals = list(dict.fromkeys(frame["signal"]))
    domain = [frame["time"].min(), frame["time"].max()] if not frame.empty else None
    scale = alt.Scale(domain=domain) if domain else alt.Undefined
    for i, name in enumerate(signals):
        last = i == len(signals) - 1
        axis = (alt.Axis(format="%H:%M", labelAngle=0, title=None) if last
                else alt.Axis(labels=False, ticks=False, title=None, domain=False))
        x = alt.X("time:T", scale=scale, axis=axis)
        data = frame[frame["signal"] == name]
        unit = plant_units(data["unit"].iloc[0]) if len(data) else ""
        if "state" in data and len(data) and data["state"].notna().any():
            charts.append(_mode_chart(data, name, x, modes, height, last))
            continue
        base = alt.Chart(data).encode(x=x)
        # a fixed label width keeps the plots of all signals aligned one above the other
        # the name goes in a title above the plot: a vertical axis title longer than the plot squashes it
        y_axis = alt.Axis(title=None, minExtent=44, maxExtent=44, tickCount=3)
        layers = []
        if windows is not None and not windows.empty:
            layers.append(alt.Chart(windows).mark_rect(color=ANOMALY_COLOUR, opacity=0.12).encode(
                x=alt.X("start:T", scale=scale, axis=axis), x2="end:T",
                tooltip=[alt.Tooltip("what:N", title="unusual"), alt.Tooltip("start:T", format="%H:%M:%S", title="from"),
                         alt.Tooltip("end:T", format="%H:%M:%S", title="to")]))
        layers += [
            base.mark_area(color=BAND_COLOUR, opacity=0.13, interpolate="step-after").encode(
                y=alt.Y("lo:Q", axis=y_axis, scale=alt.Scale(zero=False)), y2="hi:Q"),
            base.mark_area(color=LINE_COLOUR, opacity=0.18).encode(y="min:Q", y2="max:Q"),
            base.mark_line(color=LINE_COLOUR, strokeWidth=1.6).encode(
                y="mean:Q",
                tooltip=[alt.Tooltip("time:T", format="%H:%M:%S", title="time UTC"),
                         alt.Tooltip("mean:Q", format=".4g", title=f"{signal_words(name)} [{unit}]" if unit else signal_words(name)),
                         alt.Tooltip("lo:Q", format=".4g", title=f"normal from [{unit}]" if unit else "normal from"),
                         alt.Tooltip("hi:Q", format=".4g", title=f"normal to [{unit}]" if unit else "normal to")]),
            base.transform_filter(alt.datum.out).mark_circle(color=ANOMALY_COLOUR, size=16).encode(y="mean:Q"),
        ]
        if alarms is not None and not alarms.empty:
            layers.append(alt.Chart(alarms).mark_rule(strokeWidth=2, strokeDash=[4, 2]).encode(
                x=alt.X("time:T", scale=scale, axis=axis), color=alt.Color("colour:N", scale=None),
                tooltip=["alarm:N", "priority:N", "state:N", alt.Tooltip("time:T", format="%H:%M:%S")]))
        title = alt.TitleParams(f"{signal_words(name)} [{unit}]" if unit else signal_words(name), anchor="start", fontSize=11,
                                fontWeight="normal", offset=2, color="#555")
        chart = alt.layer(*layers).properties(height=height + (22 if last else 0), title=title)
        charts.append(chart.configure_view(strokeWidth=0))
    return charts


def _mode_chart(data: pd.DataFrame, name: str, x: alt.X, modes: Sequence[str] | None, height: int,
                last: bool) -> alt.LayerChart:
    """The mode over time as a step line between the mode names (idle, startup, running, ...)."""
    data = data.dropna(subset=["state"])
    order = list(modes) if modes else sorted(data["state"].unique())
    y = alt.Y("state:N", sort=order, scale=alt.Scale(domain=order), title=None,
              axis=alt.Axis(minExtent=44, maxExtent=70, labelLimit=70, labelOverlap=False, grid=True))
    base = alt.Chart(data).encode(x=x)
    chart = alt.layer(
        base.mark_line(color=LINE_COLOUR, strokeWidth=1.6, interpolate="step-after").encode(y=y),
        base.mark_circle(color=LINE_COLOUR, size=10, opacity=0.5).encode(
            y=y, tooltip=[alt.Tooltip("time:T", format="%H:%M:%S", title="time UTC"), alt.Tooltip("state:N", title="mode")]),
    ).properties(height=max(60, 24 * len(order)) + (22 if last else 0),
                 title=alt.TitleParams(f"{name} (operating mode)", anchor="start", fontSize=11, fontWeight="normal",
                                       offset=2, color="#555"))
    return chart.configure_view(strokeWidth=0)


def contribution_chart(contributions: dict[str, float], limit: int = 8) -> alt.Chart:
    """The signals that stood out in the anomaly, by their share of the score."""
    top = sorted(contributions.items(), key=lambda kv: -kv[1])[:limit]
    data = pd.DataFrame(top, columns=["signal", "share"])
    return alt.Chart(data).mark_bar(color=ANOMALY_COLOUR, opacity=0.75).encode(
        x=alt.X("share:Q", title=None, axis=alt.Axis(format="%", tickCount=4)),
        y=alt.Y("signal:N", sort="-x", title=None, axis=alt.Axis(labelLimit=220, labelOverlap=False)),
        tooltip=["signal:N", alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=40 + 28 * len(data), title=alt.TitleParams(
        "Share of the anomaly score", anchor="start", fontSize=11, fontWeight="normal", color="#555"))
