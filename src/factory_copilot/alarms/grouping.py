"""One alarm per abnormal situation: which alarms one cause explains, and how a consumer folds them under it.

An alarm's *consequences* are the alarms its cause explains (ISA-18.2 designed
suppression): they are recorded and published with ``parent_id`` = the root alarm,
but are not annunciated. A cause explains an alarm when

* it is a process alarm (a wrong sensor or lost data causes nothing in the process; a lost
  source's own alarm is never folded), and
* the alarm is on the same asset or downstream of it in the line's flow
  (``feeds`` in the line file) and not upstream of it (nothing flows upstream),
  or, between the detector's fault alarms, shows up in the same continuous
  departure of the line's detector (its one score spreads over assets as a
  fault grows and fades), and
* it is consistent with the classifier: a fault alarm the classifier names with a
  fault of its own asset upstream of the cause is the likelier cause (it takes the
  other in); one named elsewhere is folded at first and let go by the engine if
  the classifier keeps naming it; a signal alarm on the cause's own asset must be
  part of the named fault's signature (catalogue signals or the detector's
  contributions); an instrument alarm only when its signal is in that signature (a
  controller output saturates, and reads flat, under a heater fault), and
* the engine's window holds: the cause is active, or returned less than the
  grouping window ago (the engine checks times).

A PLC's own alarm (read over OPC UA A&C) is the plant's name for a situation, already on the HMI: the
copilot's process and fault alarms on its asset or downstream of it are folded under it while it stands
(``plc_explains``), never the other way round; an alarm about the data (a sensor, a lost source) is not
the PLC's situation and rings on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from factory_copilot.alarms.design import DATA_KINDS, PLC_PREFIX, find_asset
from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig
from factory_copilot.names import UNKNOWN
from factory_copilot.records import Alarm, Anomaly

FAULT = "fault"  # Anomaly.condition of the detector's (multivariate) departures


def fault_at_home(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly | None) -> str | None:
    """The fault the classifier names if it belongs to the anomaly's own asset (or the catalogue cannot say where it
    belongs); None for unknown or for a fault of another asset."""
    ft = _named(anomaly)
    if ft is None:
        return None
    fault = faults.get(ft)
    if fault is None or find_asset(line, fault.asset) is None:
        return ft  # the plant's own fault id, not in this catalogue: trust the name
    return ft if fault.asset == anomaly.asset else None


def fault_upstream(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly | None) -> str | None:
    """A fault the classifier names of an asset upstream of the anomaly's own: a cause that shows downstream."""
    ft = _named(anomaly)
    fault = faults.get(ft or "")
    if fault is None or fault.asset == anomaly.asset:
        return None
    return ft if anomaly.asset in line.downstream(fault.asset) else None


def fault_name(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly | None) -> str | None:
    """The classifier's fault where it fits the asset the departure shows on (its own or upstream), else None."""
    return fault_at_home(line, faults, anomaly) or fault_upstream(line, faults, anomaly)


def _named(anomaly: Anomaly | None) -> str | None:
    if anomaly is None or anomaly.kind != "multivariate" or anomaly.fault_type in (None, "", UNKNOWN):
        return None
    return anomaly.fault_type


def is_plc_alarm(alarm: Alarm) -> bool:
    return alarm.condition.startswith(PLC_PREFIX)


def plc_explains(line: LineConfig, plc: Alarm, effect: Alarm) -> bool:
    """Whether the PLC's alarm ``plc`` is the situation of the copilot's alarm ``effect``: a process or fault alarm
    on the PLC alarm's asset (one the line file knows) or downstream of it, and not upstream."""
    if not is_plc_alarm(plc) or is_plc_alarm(effect) or find_asset(line, plc.asset) is None:
        return False
    if kind_of(effect) in DATA_KINDS:
        return False
    if effect.asset == plc.asset:
        return True
    return effect.asset in line.downstream(plc.asset) and plc.asset not in line.downstream(effect.asset)


def kind_of(alarm: Alarm) -> str:
    return alarm.anomaly.kind if alarm.anomaly else alarm.condition.rpartition(":")[2] or alarm.condition


def is_fault_alarm(alarm: Alarm) -> bool:
    return alarm.condition == FAULT


def signal_key(alarm: Alarm) -> str | None:
    if alarm.anomaly and alarm.anomaly.signal:
        return f"{alarm.asset}.{alarm.anomaly.signal}"
    signal, sep, _ = alarm.condition.rpartition(":")
    return f"{alarm.asset}.{signal}" if sep and signal else None


def signature(faults: Mapping[str, Fault], alarm: Alarm) -> set[str]:
    """The signals a fault alarm's situation shows in: its named fault's catalogue signals and the detector's
    contributions."""
    keys = set(alarm.anomaly.contributions) if alarm.anomaly else set()
    fault = faults.get(alarm.anomaly.fault_type or "") if alarm.anomaly else None
    if fault is not None:
        keys.update(fault.signals)
    return keys


def explains(line: LineConfig, faults: Mapping[str, Fault], cause: Alarm, effect: Alarm, same_episode: bool = False) -> bool:
    """Whether ``cause`` explains ``effect`` (rules in the module docstring; times are the engine's to check).

    ``same_episode``: both are fault alarms of one continuous departure of the line's detector.
    """
    if cause.alarm_id == effect.alarm_id or kind_of(cause) in DATA_KINDS or kind_of(effect) == "source":
        return False
    if is_plc_alarm(cause) or is_plc_alarm(effect):
        return False  # the PLC's alarm is a situation of its own (plc_explains), never a copilot alarm's consequence
    same = effect.asset == cause.asset
    downstream = effect.asset in line.downstream(cause.asset)
    cause_fault = fault_name(line, faults, cause.anomaly) if is_fault_alarm(cause) else None
    effect_kind = kind_of(effect)
    if effect_kind in DATA_KINDS:
        key = signal_key(effect)
        return is_fault_alarm(cause) and key is not None and key in signature(faults, cause)
    if is_fault_alarm(effect):
        if same:
            return False  # one fault alarm per asset
        upstream = cause.asset in line.downstream(effect.asset) - line.downstream(cause.asset)
        if upstream and fault_at_home(line, faults, effect.anomaly) is not None:
            return False  # a fault named upstream of the cause is the likelier cause: it takes the other in
        if not is_fault_alarm(cause):
            return downstream and not upstream
        # the detector's one score spreads over assets as a departure grows and fades; a distinct fault the
        # classifier keeps naming for its own asset is let go by the engine (AlarmSettings.distinct_after_s)
        return same_episode or (downstream and not upstream)
    # a process signal alarm (limit, rate, ...): nothing flows upstream
    if same:
        if is_fault_alarm(cause) and cause_fault is not None:
            return signal_key(effect) in signature(faults, cause)
        return True
    return downstream and cause.asset not in line.downstream(effect.asset)


def rank(line: LineConfig, cause: Alarm, effect: Alarm) -> tuple:
    """Sort key among causes that explain ``effect``: fault alarms first, then the same asset, then the nearest
    upstream (fewest assets in between), then the earliest raised."""
    between = len(line.downstream(cause.asset) - line.downstream(effect.asset) - {effect.asset})
    return (not is_fault_alarm(cause), cause.asset != effect.asset, between, cause.raised_at)


# ---- for consumers (dashboard, SCADA bridges) -----------------------------------------------------


@dataclass
class Situation:
    """A root alarm and the consequences folded under it (the operator can unfold them)."""

    root: Alarm
    consequences: list[Alarm] = field(default_factory=list)


def fold(alarms: Iterable[Alarm]) -> list[Situation]:
    """Alarms grouped under their roots, in the order the roots come; a consequence whose root is not among
    ``alarms`` (e.g. the root was cleared and dropped) stands on its own, so nothing is hidden by folding."""
    alarms = list(alarms)
    ids = {a.alarm_id for a in alarms}
    situations: dict[str, Situation] = {}
    for a in alarms:
        if a.parent_id is None or a.parent_id not in ids:
            situations[a.alarm_id] = Situation(a)
    for a in alarms:
        if a.parent_id is not None and a.parent_id in situations and a.alarm_id not in situations:
            situations[a.parent_id].consequences.append(a)
    return list(situations.values())
