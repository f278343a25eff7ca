"""Alarm text as an operator reads it, in the line's names and units, with the condition's severity in words.

    Product transfer pump: likely bearing wear, moderate — vibration 5.2 mm/s (normal 1.0–3.5 mm/s)
    Product transfer pump: flow low, slight — 42.0 L/min (normal 95–125 L/min, limits 60–150 L/min)
    Rotary filler: unusual behaviour, severe, likely from pump cavitation upstream — mostly tank level at 12.0 % (normal 45–75 %)
    Shrink heat tunnel: likely sensor drift, moderate — mostly zone2 temperature at 203 degC (normal 180–195 degC)
    Rotary filler: fill weight sensor stuck at 501 g

No detector scores or probabilities: an operator reads what departs, on the alarm's own asset, what it
reads, how far (slight, moderate, severe) and where it is normally; the numbers behind the words are in
docs/alarms.md.
"""

from __future__ import annotations

from typing import Mapping

from factory_copilot.alarms.design import find_asset, find_signal
from factory_copilot.alarms.grouping import fault_at_home, fault_upstream
from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig, Signal
from factory_copilot.records import Anomaly, Mode


def number(x: float) -> str:
    """A reading as a display would show it: 3 significant figures without exponent noise."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.1f}"
    return f"{x:.2g}"


def band(lo_hi: tuple[float, float] | list[float]) -> str:
    """A normal band as written in the line file: both ends with the same, fewest decimals (1.0–3.5, 95–125)."""
    decimals = max(_decimals(x) for x in lo_hi)
    return f"{lo_hi[0]:.{decimals}f}–{lo_hi[1]:.{decimals}f}"


def _decimals(x: float) -> int:
    for d in range(3):
        if abs(round(x, d) - x) < 1e-9:
            return d
    return 3


def words(name: str) -> str:
    return name.replace("_", " ")


def alarm_text(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly, severity: str | None = None) -> str:
    """One line of alarm text for ``anomaly`` (unknown assets and signals are shown by their ids)."""
    if anomaly.kind == "source":
        return f"Data lost: {anomaly.message}"
    asset = find_asset(line, anomaly.asset)
    head = asset.name if asset else anomaly.asset
    how = f", {severity}" if severity else ""
    if anomaly.kind == "multivariate":
        return f"{head}: {_fault_text(line, faults, anomaly, how)}"
    signal = find_signal(line, anomaly.asset, anomaly.signal)
    name = words(anomaly.signal or "signal")
    unit = f" {signal.unit}" if signal else ""
    value = anomaly.value
    shown = f"{number(value)}{unit}" if value is not None else "no value"
    if anomaly.kind == "limit":
        direction = _direction(signal, anomaly.mode, value)
        bands = _bands(signal, anomaly.mode)
        return f"{head}: {name} {direction}{how} — {shown}{f' ({bands})' if bands else ''}"
    if anomaly.kind == "rate":
        # the check's score is the rate of change; the value is where the signal is now
        limit = f" (credible at most {number(signal.max_rate)}{unit} per second)" if signal and signal.max_rate else ""
        now = f", now {shown}" if value is not None else ""
        return f"{head}: {name} changing too fast{how} — {number(anomaly.score)}{unit} per second{limit}{now}"
    if anomaly.kind == "stuck":
        return f"{head}: {name} sensor stuck at {shown}"
    if anomaly.kind == "range":
        physical = f" (sensor range {band(signal.physical)}{unit})" if signal and signal.physical else ""
        return f"{head}: {name} sensor out of range — {shown}{physical}"
    if anomaly.kind == "quality":
        return f"{head}: {name} sensor gives no good value"
    if anomaly.kind == "unseen":
        # a signal the detector leaves out (a standby pump): the check's message says what its history held
        held = anomaly.message.partition("the history only ever held ")[2]
        return (f"{head}: {name} at a value its history never held{how} — {shown}"
                + (f"; its history held only {held}" if held else ""))
    return f"{head}: {name} {words(anomaly.kind)}{how}"


def _fault_text(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly, how: str) -> str:
    own = fault_at_home(line, faults, anomaly)
    upstream = None if own else fault_upstream(line, faults, anomaly)
    if own:
        cause = f"likely {words(own)}{how}"
    elif upstream:
        source = find_asset(line, faults[upstream].asset)
        cause = f"unusual behaviour{how}, likely from {words(upstream)} upstream"
        if source is not None:
            cause += f" ({source.name})"
    else:
        cause = f"unusual behaviour{how}"
    key = evidence_signal(faults, anomaly, own)
    if key is None:
        return cause
    signal = find_signal(line, anomaly.asset, key.partition(".")[2])
    label = words(key.partition(".")[2])
    unit = f" {signal.unit}" if signal else ""
    normal = f"normal {band(signal.normal_for(anomaly.mode))}{unit}" if signal else ""
    value = anomaly.value if anomaly.signal else anomaly.values.get(key)
    if value is None:  # an anomaly that did not carry the row's values: the band, with its unit
        return f"{cause} — mostly {label}{f' ({normal})' if normal else ''}"
    if anomaly.signal:
        return f"{cause} — {label} {number(value)}{unit}{f' ({normal})' if normal else ''}"
    return f"{cause} — mostly {label} at {number(value)}{unit}{f' ({normal})' if normal else ''}"


def evidence_signal(faults: Mapping[str, Fault], anomaly: Anomaly, named: str | None) -> str | None:
    """The signal a fault alarm's text points the technician to: always one of the alarm's own asset.

    The detector's signal if it names one; for a fault the classifier names on this asset, the catalogue's
    telltale (the first of the fault's signals on the asset: the drifting sensor of a drift, the vibration of
    a bearing); otherwise the asset's own largest contributor. Another asset's contributor is never named: the
    detector's shares spread over correlated signals of the whole line, and a text naming another machine
    sends the technician to the wrong place.
    """
    own = anomaly.asset + "."
    if anomaly.signal:
        return own + anomaly.signal.removeprefix(own)
    fault = faults.get(named or "")
    telltale = next((k for k in (fault.signals if fault else []) if k.startswith(own)), None)
    if telltale is not None:
        return telltale
    return next((k for k, _ in sorted(anomaly.contributions.items(), key=lambda kv: -kv[1]) if k.startswith(own)), None)


def _direction(signal: Signal | None, mode: Mode, value: float | None) -> str:
    if signal is None or value is None:
        return "out of limits"
    lo, hi = signal.limits or signal.normal_for(mode)
    if value > hi:
        return "high"
    if value < lo:
        return "low"
    lo, hi = signal.normal_for(mode)
    return "high" if value > hi else "low" if value < lo else "out of limits"


def _bands(signal: Signal | None, mode: Mode) -> str:
    if signal is None:
        return ""
    unit = f" {signal.unit}" if signal.unit else ""
    parts = [f"normal {band(signal.normal_for(mode))}{unit}"]
    if signal.limits:
        parts.append(f"limits {band(signal.limits)}{unit}")
    return ", ".join(parts)
