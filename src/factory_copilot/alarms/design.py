"""Alarm design for a condition: its id, how far it has gone, its priority and whether the operating mode suppresses it.

These are the rationalisation rules of ISA-18.2, derived from the line file and
the fault catalogue so that every alarm of a kind is treated alike (docs/alarms.md
has the tables):

Level and severity
  Every process anomaly is put on its check's own scale, 1.0 at the alarm
  threshold: the detector's score as a distance (the square root of score /
  threshold: the score is a squared distance), a limit alarm by how far past the
  engineering limit the value is relative to the room the limit left, other
  checks by score / threshold. ``slight`` up to the scale's ``moderate`` mark,
  ``severe`` from its ``severe`` mark. Instrument faults (stuck, range, quality)
  have no severity: the sensor is wrong, the process is not measured by it.

Priority = consequence x urgency
  * consequence: the catalogue's priority of the fault the alarm names (the
    plant's own rationalisation of that fault), else the signal's priority, else
    the asset's criticality from the line file;
  * urgency: the time until the condition becomes severe at its current trend:
    ``immediate`` (under 5 min, or severe already), ``prompt`` (under 30 min, or
    no trend known yet), ``deferred`` (longer, or not getting worse);
  * instrument faults are ``prompt``: one step below their consequence.
  * ``source`` (a lost source: the operator is blind to every signal it served): HIGH.

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
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Collection, Mapping

from factory_copilot.catalogue import Fault
from factory_copilot.config import Asset, LineConfig, Signal
from factory_copilot.records import Anomaly, Priority

PROCESS_KINDS = frozenset({"limit", "rate"})
INSTRUMENT_KINDS = frozenset({"stuck", "range", "quality"})
DATA_KINDS = INSTRUMENT_KINDS | {"source"}  # the data, not the process, is wrong: no severity, no part in a situation
PLC_PREFIX = "plc:"  # the condition of a PLC's alarm: plc:<ConditionId>

SEVERITIES = ("slight", "moderate", "severe")
URGENCIES = ("immediate", "prompt", "deferred")
IMMEDIATE_S = 300.0  # severe within 5 minutes at the current trend
PROMPT_S = 1800.0  # ... within 30 minutes

# consequence -> priority for each urgency (immediate, prompt, deferred)
PRIORITY_MATRIX: dict[Priority, tuple[Priority, Priority, Priority]] = {
    Priority.CRITICAL: (Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM),
    Priority.HIGH: (Priority.HIGH, Priority.MEDIUM, Priority.LOW),
    Priority.MEDIUM: (Priority.MEDIUM, Priority.LOW, Priority.LOW),
    Priority.LOW: (Priority.LOW, Priority.LOW, Priority.LOW),
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Scale:
    """How one check measures how far a condition has gone; its level is 1.0 at the alarm threshold."""

    moderate: float
    severe: float
    distance: bool = False  # the score is a squared distance: level = sqrt(score / threshold)


SCALES: dict[str, Scale] = {
    "multivariate": Scale(moderate=2.0, severe=5.0, distance=True),  # 2x / 5x as far from normal as the threshold
    "limit": Scale(moderate=1.25, severe=2.0),  # past the limit by a quarter / all of the room it left
}
DEFAULT_SCALE = Scale(moderate=2.0, severe=5.0)  # rate and any other check: score / threshold


def alarm_id(asset: str, condition: str, taken: Collection[str] = ()) -> str:
    """A readable, topic-safe id for ``asset`` + ``condition``, distinct from every id in ``taken``."""
    if ":" in condition:  # "<signal>:<kind>"
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


# ---- how far a condition has gone ---------------------------------------------------------------


def ratio(line: LineConfig, anomaly: Anomaly) -> float:
    """How far along its check's scale the anomaly is: 1.0 at the alarm threshold, below 1 inside it.

    The detect station reports a limit (or range) breach as ``score`` = the value and
    ``threshold`` = the limit it crossed, so a low-limit breach has score < threshold;
    the signal's limits tell which side it is on.
    """
    if anomaly.kind in ("limit", "range") and anomaly.value is not None:
        signal = find_signal(line, anomaly.asset, anomaly.signal)
        bounds = (signal.limits if anomaly.kind == "limit" else signal.physical) if signal else None
        if bounds and anomaly.threshold in bounds:
            return _past_limit(signal, anomaly, bounds)
    if anomaly.threshold > 0:
        return anomaly.score / anomaly.threshold
    return 1.0 + (anomaly.score - anomaly.threshold)  # a zero threshold (e.g. bad quality): any score at or above it


def _past_limit(signal: Signal, anomaly: Anomaly, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    low_side = anomaly.threshold == lo and (anomaly.threshold != hi or anomaly.value < lo)
    limit = lo if low_side else hi
    beyond = (limit - anomaly.value) if low_side else (anomaly.value - limit)
    normal = signal.normal_for(anomaly.mode)
    margin = abs(limit - (normal[0] if low_side else normal[1]))  # the room the limit left beyond normal
    if signal.physical and anomaly.kind == "limit":
        end = signal.physical[0] if low_side else signal.physical[1]
        room = abs(end - limit)  # and no further than the sensor can read
        margin = min(margin, room) if room > 0 else margin
    if margin <= 0:
        margin = max(abs(normal[1] - normal[0]), abs(limit), 1e-9)
    return 1.0 + beyond / margin


def scale(kind: str) -> Scale:
    return SCALES.get(kind, DEFAULT_SCALE)


def level(line: LineConfig, anomaly: Anomaly, asset: str | None = None) -> float | None:
    """The anomaly on its check's scale (1.0 at the threshold), linear in the process variable; None for instruments.

    For the detector's departures, ``asset``'s part of it: the score times the share its signals carry (all of it
    when the detector gives no contributions).
    """
    if anomaly.kind in DATA_KINDS:
        return None
    r = ratio(line, anomaly)
    if anomaly.kind == "multivariate" and anomaly.contributions:
        r *= share(anomaly, asset or anomaly.asset)
    return math.sqrt(max(r, 0.0)) if scale(anomaly.kind).distance else r


def share(anomaly: Anomaly, asset: str) -> float:
    """The share of a detector score that ``asset``'s signals carry (1.0 without contributions)."""
    if not anomaly.contributions:
        return 1.0
    prefix = asset + "."
    return sum(v for k, v in anomaly.contributions.items() if k.startswith(prefix))


def severity(kind: str, lvl: float | None) -> str | None:
    """``slight``, ``moderate`` or ``severe`` for a level of a check of ``kind``; None for instrument faults."""
    if lvl is None or kind in DATA_KINDS:
        return None
    s = scale(kind)
    return "severe" if lvl >= s.severe else "moderate" if lvl >= s.moderate else "slight"


def worse_severity(a: str | None, b: str | None) -> str | None:
    rank = {None: -1, **{s: i for i, s in enumerate(SEVERITIES)}}
    return a if rank.get(a, -1) >= rank.get(b, -1) else b


def severity_rank(s: str | None) -> int:
    return SEVERITIES.index(s) if s in SEVERITIES else -1


# ---- priority ----------------------------------------------------------------------------------


class LevelSlope:
    """The least-squares slope of a condition's level over a sliding window, kept in O(1) per sample (the alarm's
    urgency: how fast it heads for severe; not a trend of a signal, which the store keeps and the copilot reads)."""

    __slots__ = ("window_s", "samples", "_t0", "_n", "_st", "_sv", "_stt", "_stv", "_adds")

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.samples: deque[tuple[float, float]] = deque()
        self.clear()

    def clear(self) -> None:
        self.samples.clear()
        self._t0 = None
        self._n = self._st = self._sv = self._stt = self._stv = 0.0
        self._adds = 0

    def add(self, t: float, v: float) -> None:
        if self._t0 is None:
            self._t0 = t
        self.samples.append((t, v))
        self._sum(t, v, 1.0)
        while self.samples[0][0] < t - self.window_s:
            self._sum(*self.samples.popleft(), -1.0)
        self._adds += 1
        if self._adds >= 1000:  # start the sums afresh now and then: no drift from rounding
            kept = list(self.samples)
            self.clear()
            for t_, v_ in kept:
                self._t0 = kept[0][0]
                self.samples.append((t_, v_))
                self._sum(t_, v_, 1.0)

    def _sum(self, t: float, v: float, sign: float) -> None:
        x = t - self._t0
        self._n += sign
        self._st += sign * x
        self._sv += sign * v
        self._stt += sign * x * x
        self._stv += sign * x * v

    @property
    def span(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0.0

    def slope(self) -> float | None:
        """Change of the level per second, None with fewer than 3 samples."""
        n = self._n
        if n < 3:
            return None
        var = self._stt - self._st * self._st / n
        if var <= 1e-12:
            return None
        return (self._stv - self._st * self._sv / n) / var


def time_to_severe(kind: str, lvl: float, slope: float | None) -> float | None:
    """Seconds until the condition is severe at its current trend: 0 if it is already, inf if it is not getting
    worse, None if no trend is known yet."""
    severe = scale(kind).severe
    if lvl >= severe:
        return 0.0
    if slope is None:
        return None
    if slope <= 0:
        return math.inf
    return (severe - lvl) / slope


def urgency(seconds: float | None) -> str:
    if seconds is None:
        return "prompt"  # no trend yet: neither the most nor the least urgent
    if seconds < IMMEDIATE_S:
        return "immediate"
    if seconds < PROMPT_S:
        return "prompt"
    return "deferred"


def consequence(line: LineConfig, faults: Mapping[str, Fault], anomaly: Anomaly, fault_type: str | None) -> Priority:
    """How bad the condition's course is: the named fault's catalogue priority, the signal's, else the asset's."""
    asset = find_asset(line, anomaly.asset)
    base = asset.consequence if asset else Priority.MEDIUM
    if anomaly.kind == "multivariate":
        fault = faults.get(fault_type or "")
        return fault.priority if fault else base
    signal = find_signal(line, anomaly.asset, anomaly.signal)
    return (signal.priority if signal and signal.priority else None) or base


def priority(consequence_: Priority, urgency_: str, kind: str) -> Priority:
    """The ISA-18.2 priority matrix (instrument faults are 'prompt': one step below their consequence)."""
    if kind == "source":
        return Priority.HIGH  # the operator is blind to every signal it served
    column = URGENCIES.index("prompt" if kind in INSTRUMENT_KINDS else urgency_)
    return PRIORITY_MATRIX[consequence_][column]


# ---- designed suppression by mode --------------------------------------------------------------------


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
    if condition == "fault":
        a = find_asset(line, asset)
        return frozenset(f"{asset}.{s.name}" for s in a.signals) if a else frozenset()
    signal = condition.rpartition(":")[0]
    return frozenset({f"{asset}.{signal}"})


def operator_position(line: LineConfig, asset: str) -> str:
    a = find_asset(line, asset)
    return a.operator_position if a else "main"
