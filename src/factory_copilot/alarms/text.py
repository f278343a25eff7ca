"""Alarm text as an operator reads it, in the line's names and units.

    Product transfer pump: likely bearing wear (p=0.87) — vibration 5.2 mm/s (normal 1.0–3.5)
    Product transfer pump: flow low — 42 L/min (normal 95–125, limits 60–150)
    Rotary filler: fill weight sensor stuck at 501 g
"""

from __future__ import annotations

from typing import Mapping

from factory_copilot.alarms.design import find_asset, find_signal
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


def alarm_text(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly) -> str:
    """One line of alarm text for ``anomaly`` (unknown assets and signals are shown by their ids)."""
    if anomaly.kind == "source":
        return f"Data lost: {anomaly.message}"
    asset = find_asset(line, anomaly.asset)
    head = asset.name if asset else anomaly.asset
    if anomaly.kind == "multivariate":
        return f"{head}: {_fault_text(line, faults, anomaly)}"
    signal = find_signal(line, anomaly.asset, anomaly.signal)
    name = words(anomaly.signal or "signal")
    unit = f" {signal.unit}" if signal else ""
    value = anomaly.value
    shown = f"{number(value)}{unit}" if value is not None else "no value"
    if anomaly.kind == "limit":
        direction = _direction(signal, anomaly.mode, value)
        bands = _bands(signal, anomaly.mode)
        return f"{head}: {name} {direction} — {shown}{f' ({bands})' if bands else ''}"
    if anomaly.kind == "rate":
        limit = f" (max {number(signal.max_rate)}{unit}/s)" if signal and signal.max_rate else ""
        return f"{head}: {name} changing too fast — {shown}{limit}"
    if anomaly.kind == "stuck":
        return f"{head}: {name} sensor stuck at {shown}"
    if anomaly.kind == "range":
        physical = f" (sensor range {band(signal.physical)}{unit})" if signal and signal.physical else ""
        return f"{head}: {name} sensor out of range — {shown}{physical}"
    if anomaly.kind == "quality":
        return f"{head}: {name} sensor gives no good value"
    return f"{head}: {name} {words(anomaly.kind)} (score {number(anomaly.score)} > {number(anomaly.threshold)})"


def _fault_text(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly) -> str:
    fault = anomaly.fault_type if anomaly.fault_type not in (None, "unknown") else None
    if fault:
        cause = f"likely {words(fault)}"
        if anomaly.fault_probability:
            cause += f" (p={anomaly.fault_probability:.2f})"
    else:
        cause = f"unusual behaviour (score {number(anomaly.score)}, threshold {number(anomaly.threshold)})"
    # the evidence an operator checks first: the signal the detector names, else its top contributor
    key = f"{anomaly.asset}.{anomaly.signal}" if anomaly.signal else next(iter(anomaly.contributions), None)
    if key is None:
        return cause
    asset_id, _, signal_name = key.partition(".")
    signal = find_signal(line, asset_id, signal_name)
    other = find_asset(line, asset_id)
    label = words(signal_name) if asset_id == anomaly.asset else f"{other.name if other else asset_id} {words(signal_name)}"
    normal = f"normal {band(signal.normal_for(anomaly.mode))}" if signal else ""
    if anomaly.signal and anomaly.value is not None:
        unit = f" {signal.unit}" if signal else ""
        return f"{cause} — {label} {number(anomaly.value)}{unit}{f' ({normal})' if normal else ''}"
    unit = f" {signal.unit}" if signal else ""
    return f"{cause} — mostly {label}{f' ({normal}{unit})' if normal else ''}"


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
    parts = [f"normal {band(signal.normal_for(mode))}"]
    if signal.limits:
        parts.append(f"limits {band(signal.limits)}")
    return ", ".join(parts)
