"""Retuning the detect models from alarms that operators marked false.

A false multivariate ("fault") alarm says the line's normal in that operating mode is
wider than the detector learnt: the mode's threshold is raised just past the highest
score the false alarm reached, but never so far that a confirmed fault in that mode
would no longer alarm on most of its rows, and never more than ``max_raise`` per retune.
A false alarm far past what two retunes could absorb changes nothing: it was a real
departure (often the consequence of another alarm), and the report says so.
A false "stuck" alarm takes the signal off the stuck check (it sits flat legitimately). A false "unseen"
alarm adds the values it reported to those the signal's history held (the standby pump may run there).
Limits, rates and ranges are the plant's own engineering values in the line file: a
retune only says which field to look at, it never moves them.

Each retune is recorded in the models' metadata (when, by whom, which alarms, by how
much), so re-running it never counts the same false alarm twice, and scores recorded
before an earlier retune are read against the threshold as it is now.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from factory_copilot.config import LineConfig
from factory_copilot.detect.checks import merge_seen
from factory_copilot.detect.multivariate import ALL_MODES, mode_labels
from factory_copilot.detect.persist import TrainedDetector
from factory_copilot.records import Anomaly, MarkedAlarm

FAULT_CONDITION = "fault"
LINE_FILE_FIELDS = {"limit": "limits", "rate": "max_rate", "range": "physical"}


@dataclass
class ThresholdChange:
    """One mode's threshold raised by ``factor``, and why it stopped there."""

    mode: str
    factor: float
    needed: float  # what the false alarms alone asked for
    bound_by: str  # "false alarms", "max_raise" or "confirmed fault <alarm id>"
    alarms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "factor": round(self.factor, 4), "needed": round(self.needed, 4),
                "bound_by": self.bound_by, "alarms": self.alarms}


@dataclass
class RetuneReport:
    """What a retune changed, and what it left to the engineer."""

    thresholds: list[ThresholdChange] = field(default_factory=list)
    stuck_exempted: list[str] = field(default_factory=list)
    seen_added: dict[str, list[float]] = field(default_factory=dict)  # signal -> values now taken as held
    advice: list[str] = field(default_factory=list)  # false alarms a threshold cannot absorb
    used: list[str] = field(default_factory=list)  # false alarms taken into this retune
    already_used: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.thresholds or self.stuck_exempted or self.seen_added)

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "thresholds": [t.to_dict() for t in self.thresholds],
                "stuck_exempted": self.stuck_exempted, "seen_added": self.seen_added, "advice": self.advice,
                "used": self.used, "already_used": self.already_used}


def _model_key(models: TrainedDetector, a: Anomaly) -> str | None:
    """Which of the detector's mode models judged this anomaly (a detector without modes has one for all)."""
    mode = str(mode_labels([a.mode])[0])
    fitted = models.detector.models_
    return mode if mode in fitted else ALL_MODES if ALL_MODES in fitted else None


def _later_factor(models: TrainedDetector, mode: str, ts: float) -> float:
    """How much the mode's threshold was raised after ``ts`` (scores recorded then are relative to the old one)."""
    f = 1.0
    for r in models.metadata.get("retunes", []):
        if r["ts"] > ts:
            f *= r.get("factors", {}).get(mode, 1.0)
    return f


def _scores_now(models: TrainedDetector, alarm: MarkedAlarm) -> dict[str, list[float]]:
    """The alarm's multivariate scores per mode, relative to the threshold as it stands now."""
    out: dict[str, list[float]] = {}
    for a in alarm.anomalies:
        if a.kind != "multivariate" or not math.isfinite(a.score):
            continue
        mode = _model_key(models, a)
        if mode is not None:
            out.setdefault(mode, []).append(a.score / _later_factor(models, mode, a.ts))
    return out


def _line_file_path(line: LineConfig, asset: str, signal: str | None, field_name: str) -> str:
    for i, a in enumerate(line.assets):
        if a.id == asset:
            for j, s in enumerate(a.signals):
                if s.name == signal:
                    return f"assets[{i}].signals[{j}].{field_name}"
    return f"{asset}.{signal}.{field_name}"


def retune(
    models: TrainedDetector,
    line: LineConfig,
    false_alarms: Sequence[MarkedAlarm],
    confirmed: Sequence[MarkedAlarm] = (),
    *,
    margin: float = 1.05,
    max_raise: float = 1.5,
    actor: str | None = None,
    now: float | None = None,
) -> RetuneReport:
    """Raise thresholds (and exempt stuck signals) in ``models`` in place from ``false_alarms``; see the module docstring.

    ``confirmed`` are alarms operators confirmed as real (or gave another real cause for):
    no mode's threshold rises past the median score of a confirmed fault in that mode.
    """
    if margin < 1.0 or max_raise < 1.0:
        raise ValueError("retune margin and max_raise must be >= 1.0")
    detector = models.detector
    done = set(models.metadata.get("retuned_alarms", []))
    report = RetuneReport()
    needed: dict[str, float] = {}
    by_mode: dict[str, list[str]] = {}
    for fa in false_alarms:
        if fa.alarm_id in done:
            report.already_used.append(fa.alarm_id)
            continue
        signal, _, kind = fa.condition.partition(":")  # "<signal>:<check>" for single-signal conditions
        if fa.condition == FAULT_CONDITION:
            scores = _scores_now(models, fa)
            if not scores:
                report.advice.append(f"{fa.alarm_id}: no detector scores stored for it (retention?); nothing to learn from")
                continue
            for mode, values in scores.items():
                needed[mode] = max(needed.get(mode, 1.0), max(values) * margin)
                by_mode.setdefault(mode, []).append(fa.alarm_id)
        elif kind == "stuck":
            key = f"{fa.asset}.{signal}"
            if key not in models.stuck_exempt:
                models.stuck_exempt.add(key)
                report.stuck_exempted.append(key)
        elif kind == "unseen":
            key = f"{fa.asset}.{signal}"
            values = sorted({a.value for a in fa.anomalies if a.value is not None and math.isfinite(a.value)})
            if key not in models.seen or not values:
                report.advice.append(f"{fa.alarm_id}: no values recorded for it, or {key} is no longer watched; "
                                     "nothing to learn from")
                continue
            models.seen[key] = merge_seen([*models.seen[key], *((v, v, 1) for v in values)],
                                          models.seen_tolerance.get(key, 0.0))
            report.seen_added.setdefault(key, []).extend(values)
        elif kind in LINE_FILE_FIELDS:
            peak = max((abs(a.value) for a in fa.anomalies if a.value is not None), default=None)
            seen = f", values up to {peak:g} seen" if peak is not None else ""
            report.advice.append(
                f"{fa.alarm_id}: {kind} alarm on {fa.asset}.{signal} comes from the line file "
                f"({_line_file_path(line, fa.asset, signal, LINE_FILE_FIELDS[kind])}){seen}; widen it there if that is normal")
        else:
            report.advice.append(f"{fa.alarm_id}: {fa.condition} alarms report the instrument or its link, not a "
                                 "threshold; check the sensor and the connection")
            continue
        report.used.append(fa.alarm_id)

    guard: dict[str, tuple[float, str]] = {}
    for c in confirmed:
        if c.condition != FAULT_CONDITION:
            continue
        for mode, values in _scores_now(models, c).items():
            limit = statistics.median(values) / margin
            if mode not in guard or limit < guard[mode][0]:
                guard[mode] = (limit, c.alarm_id)

    factors: dict[str, float] = {}
    for mode, need in sorted(needed.items()):
        if need > max_raise ** 2:
            # a raise cannot make such an alarm go away; it would only blunt the detector for real faults
            report.advice.append(
                f"{mode}: {', '.join(by_mode[mode])} reached {need / margin:.3g}x the threshold, far past what a retune "
                f"absorbs (x{max_raise:g} each); the departure was real: if it followed another alarm, mark it with "
                "that cause instead; else check the signals that stood out")
            continue
        factor, bound = need, "false alarms"
        if factor > max_raise:
            factor, bound = max_raise, "max_raise"
        if mode in guard and factor > guard[mode][0]:
            factor, bound = guard[mode][0], f"confirmed fault {guard[mode][1]}"
        if factor <= 1.0:
            report.advice.append(f"{mode}: the threshold stays; raising it would hide confirmed fault {guard[mode][1]}"
                                 if bound != "false alarms" else f"{mode}: the false alarms were at the threshold already")
            continue
        detector.models_[mode].threshold *= factor
        factors[mode] = factor
        report.thresholds.append(ThresholdChange(mode, factor, need, bound, by_mode[mode]))

    if report.changed:  # a retune that changed nothing leaves its false alarms to be looked at again
        models.metadata.setdefault("retunes", []).append({
            "ts": time.time() if now is None else now, "by": actor, "alarms": report.used, "factors": factors,
            "stuck_exempted": report.stuck_exempted, "seen_added": report.seen_added,
        })
        models.metadata["retuned_alarms"] = sorted(done | set(report.used))
    return report
