"""Alarm design for a condition: its id, its priority and whether the operating mode suppresses it.

These are the rationalisation rules of ISA-18.2, derived from the line file and
the fault catalogue so that every alarm of a kind is treated alike:

Priority
  * ``multivariate`` (a classified fault): the fault's priority from the catalogue;
    an unknown or uncatalogued fault falls back to the asset's priority.
  * ``limit`` / ``rate`` (process checks on one signal): the signal's priority,
    else the asset's priority.
  * ``stuck`` / ``range`` / ``quality`` (instrument faults: the sensor, not the
    process, is wrong): the signal's (else the asset's) priority one step lower,
    never below LOW.
  * ``source`` (a lost source: the operator is blind to its signals): HIGH.
  * anything else: the asset's priority.

Designed suppression by operating mode
  A ``limit`` or ``rate`` alarm is suppressed while the line is in a mode that is
  not production (the line file's ``modes.production``: the demo's idle, start-up,
  changeover) if its signal has a different normal band in that mode than in
  production: the process is *meant* to be elsewhere then (a stopped pump
  has no flow), so the engineering limit says nothing. Signals without a mode
  band (e.g. product temperature) keep their limit alarms in every mode.
  Multivariate and instrument alarms are never mode-suppressed: the detect
  station already judges them against mode-specific normals.

Alarm ids
  ``<asset>.<signal>-<kind>`` or ``<asset>.fault-<fault_type>``, reduced to
  ``[A-Za-z0-9_.-]`` so an id is safe inside an MQTT topic (no ``/``, ``+``, ``#``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Collection, Mapping

from factory_copilot.catalogue import Fault
from factory_copilot.config import Asset, LineConfig, Signal
from factory_copilot.records import Anomaly, Priority

PROCESS_KINDS = frozenset({"limit", "rate"})
INSTRUMENT_KINDS = frozenset({"stuck", "range", "quality"})

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def alarm_id(asset: str, condition: str, taken: Collection[str] = ()) -> str:
    """A readable, topic-safe id for ``asset`` + ``condition``, distinct from every id in ``taken``."""
    if condition.startswith("fault:"):
        slug = "fault-" + condition.removeprefix("fault:")
    elif ":" in condition:  # "<signal>:<kind>"
        signal, _, kind = condition.rpartition(":")
        slug = f"{signal}-{kind}"
    else:
        slug = condition
    slug = _UNSAFE.sub("_", slug).strip("_") or "condition"
    candidate = f"{_UNSAFE.sub('_', asset)}.{slug}"
    if candidate in taken:
        # two conditions that differ only in unsafe characters: keep both apart, deterministically
        digest = hashlib.sha1(f"{asset}\0{condition}".encode()).hexdigest()[:6]
        candidate = f"{candidate}-{digest}"
    return candidate


def find_asset(line: LineConfig, asset: str) -> Asset | None:
    try:
        return line.asset(asset)
    except KeyError:
        return None


def find_signal(line: LineConfig, asset: str, signal: str | None) -> Signal | None:
    if not signal:
        return None
    a = find_asset(line, asset)
    if a is None:
        return None
    try:
        return a.signal(signal)
    except KeyError:
        return None


def priority_for(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly) -> Priority:
    """The alarm priority for the condition ``anomaly`` reports (rules in the module docstring)."""
    if anomaly.kind == "source":
        return Priority.HIGH  # the operator is blind to every signal it served
    asset = find_asset(line, anomaly.asset)
    asset_priority = asset.priority if asset else Priority.MEDIUM
    if anomaly.kind == "multivariate":
        fault = faults.get(anomaly.fault_type or "")
        return fault.priority if fault else asset_priority
    signal = find_signal(line, anomaly.asset, anomaly.signal)
    base = (signal.priority if signal and signal.priority else None) or asset_priority
    if anomaly.kind in INSTRUMENT_KINDS:
        return Priority(min(base.value + 1, Priority.LOW.value))
    return base


def mode_suppressed(line: LineConfig, anomaly: Anomaly) -> bool:
    """True when designed suppression applies: a limit/rate alarm of a signal whose band moves in this mode."""
    if anomaly.kind not in PROCESS_KINDS or line.is_production(anomaly.mode):
        return False
    signal = find_signal(line, anomaly.asset, anomaly.signal)
    if signal is None:
        return False
    return tuple(signal.normal_for(anomaly.mode)) != tuple(signal.normal)


def condition_signals(line: LineConfig, asset: str, condition: str) -> frozenset[str]:
    """The signal keys a condition is judged on: its signal, or every signal of its asset for a fault."""
    if condition.endswith(":source"):
        return frozenset()  # a lost source's own alarm is about the silence: it must return when data flows
    if condition == "fault" or condition.startswith("fault:"):
        a = find_asset(line, asset)
        return frozenset(f"{asset}.{s.name}" for s in a.signals) if a else frozenset()
    signal = condition.rpartition(":")[0]
    return frozenset({f"{asset}.{signal}"})


def operator_position(line: LineConfig, asset: str) -> str:
    a = find_asset(line, asset)
    return a.operator_position if a else "main"
