"""The small typed records that flow between stations.

collect -> Reading -> detect -> Anomaly -> alarms -> Alarm/AlarmEvent -> copilot -> Diagnosis

Every station consumes and produces only these records, so each can be tested
alone with hand-made ones. Readings are plain slotted dataclasses because
thousands of them pass per second; the rarer records convert to and from JSON
with ``to_dict``/``from_dict``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Iterable


class Quality(str, enum.Enum):
    """OPC UA status severity, reduced to what a detector must respect."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Mode(str):
    """An operating mode's name, as the line file declares it (``running``, ``changeover``, ``night``, ...).

    A plain string: a plant names its own modes (``LineConfig.modes``), and which of them is production is
    the line file's to say (``LineConfig.is_production``). ``value`` reads the name as the earlier fixed enum did.
    """

    __slots__ = ()

    @property
    def value(self) -> str:
        return str.__str__(self)


# the one mode of a line that declares none
DEFAULT_MODE = Mode("running")


@dataclass(slots=True, frozen=True)
class Reading:
    """One sample of one signal, from whichever source delivered it.

    ``ts`` is seconds since the epoch (UTC) as stamped by the source.
    ``value`` is None when the source had no usable value (quality BAD).
    """

    ts: float
    asset: str
    signal: str
    value: float | None
    quality: Quality = Quality.GOOD
    source: str = ""
    unit: str = ""

    @property
    def key(self) -> str:
        return f"{self.asset}.{self.signal}"

    @property
    def is_process_value(self) -> bool:
        """Only GOOD values are process values; Bad/Uncertain are marked, never used as data."""
        return self.quality is Quality.GOOD and self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "asset": self.asset,
            "signal": self.signal,
            "value": self.value,
            "quality": self.quality.value,
            "source": self.source,
            "unit": self.unit,
        }


@dataclass(slots=True, frozen=True)
class SourceState:
    """A source's connection came up or went down: the collect station says so, in order with its readings.

    ``source`` names the source ("opcua", "mqtt", or one Sparkplug edge node); ``signals`` are the
    signal keys it serves. Lost data is a state, not a value: detect turns a source that is down (or
    whose signals all went silent) into one source alarm, and no alarm on its signals returns meanwhile.
    """

    source: str
    ts: float
    connected: bool
    detail: str = ""
    signals: tuple[str, ...] = ()


class Priority(int, enum.Enum):
    """ISA-18.2 alarm priority; lower number is more urgent."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4

    @classmethod
    def parse(cls, value: "str | int | Priority") -> "Priority":
        if isinstance(value, Priority):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            names = ", ".join(p.name.lower() for p in cls)
            raise ValueError(f"unknown priority {value!r}; use one of {names} or 1-4") from None


@dataclass(slots=True)
class Anomaly:
    """A departure from normal that the detect station found.

    ``kind`` says which check found it: ``multivariate``, ``limit``, ``rate``,
    ``stuck``, ``range``, ``quality``, ``unseen`` (a signal the detector leaves out, at a value its history
    never held) or ``source`` (a lost source). ``signal`` is set for single-signal
    checks, None for multivariate ones. ``contributions`` maps signal keys
    (``asset.signal``) to their share of the score, largest first; ``values`` holds what those signals (and
    every signal of ``asset``) read in the evaluated row, so the alarm text can say the value, not only the band.
    """

    ts: float
    asset: str
    kind: str
    score: float
    threshold: float
    signal: str | None = None
    value: float | None = None
    contributions: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    fault_type: str | None = None
    fault_probability: float = 0.0
    mode: Mode = DEFAULT_MODE
    message: str = ""
    # signal keys whose data is lost (kind "source", or a silent signal's "quality"): no alarm on them may
    # return while they stay silent, because silence is not normal
    stale: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.mode, Mode):
            self.mode = Mode(self.mode)

    @property
    def condition(self) -> str:
        """The alarm condition this anomaly belongs to: one alarm per asset + condition.

        A multivariate departure is one condition per asset ("fault"): the classifier's
        name for it firms up while the fault grows, and that must update the alarm,
        not raise a second one.
        """
        if self.kind == "multivariate":
            return "fault"
        if self.kind == "source":
            return f"{self.signal}:source"
        return f"{self.signal}:{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mode"] = str(self.mode.value)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Anomaly":
        d = dict(d)
        d["mode"] = Mode(d.get("mode") or DEFAULT_MODE)
        d["stale"] = tuple(d.get("stale") or ())
        return cls(**{k: v for k, v in d.items() if k in _fields(cls)})


class AlarmState(str, enum.Enum):
    """ISA-18.2 / OPC UA Part 9 alarm states."""

    NORMAL = "normal"
    ACTIVE_UNACK = "active_unacknowledged"
    ACTIVE_ACK = "active_acknowledged"
    RTN_UNACK = "returned_unacknowledged"

    @property
    def active(self) -> bool:
        return self in (AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK)

    @property
    def acknowledged(self) -> bool:
        return self in (AlarmState.NORMAL, AlarmState.ACTIVE_ACK)


@dataclass(slots=True)
class Alarm:
    """One alarm per condition (asset + signal check or fault), with its ISA-18.2 state."""

    alarm_id: str
    asset: str
    condition: str
    state: AlarmState
    priority: Priority
    message: str
    raised_at: float
    updated_at: float
    anomaly: Anomaly | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    shelved_until: float | None = None
    shelved_by: str | None = None
    out_of_service: bool = False
    suppressed: bool = False
    realarm_count: int = 0
    flood_id: str | None = None
    parent_id: str | None = None  # the root alarm whose consequence this is (folded under it, not annunciated)
    severity: str | None = None  # how far the condition has gone: slight, moderate, severe (None: instrument fault)
    unacked_since: float | None = None  # since when it rings unacknowledged (None: acknowledged or not shown)
    overdue: list[str] = field(default_factory=list)  # the groups told it is overdue since (replaced, never mutated)

    @property
    def shelved(self) -> bool:
        return self.shelved_until is not None and self.shelved_until > time.time()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        d["priority"] = self.priority.name.lower()
        d["anomaly"] = self.anomaly.to_dict() if self.anomaly else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Alarm":
        d = {k: v for k, v in d.items() if k in _fields(cls)}
        d["state"] = AlarmState(d["state"])
        d["priority"] = Priority.parse(d["priority"])
        if d.get("anomaly"):
            d["anomaly"] = Anomaly.from_dict(d["anomaly"])
        return cls(**d)


@dataclass(frozen=True, slots=True)
class PlcCondition:
    """One OPC UA Alarms & Conditions event of a PLC's condition, as the collector read it (collect -> alarms).

    ``condition_id`` (the ConditionId, a node id string) names the condition across events and reconnects;
    ``event_id`` is the newest EventId (hex), the one an Acknowledge must name. ``retain`` false: the condition
    is gone (inactive and acknowledged). ``kind`` "refresh_start"/"refresh_end" brackets a ConditionRefresh
    (no condition then): what stood before and was not refreshed is gone.
    """

    condition_id: str
    ts: float
    kind: str = "condition"
    event_id: str = ""
    source_node: str = ""
    source_name: str = ""
    asset: str = ""
    signal: str | None = None
    severity: int = 0
    message: str = ""
    active: bool = False
    acked: bool = True
    confirmed: bool | None = None
    shelved: bool = False
    unshelve_in_s: float | None = None  # ShelvingState/UnshelveTime: how long the PLC's shelving has left
    retain: bool = False
    endpoint: str = ""
    user: str = ""  # ClientUserId: who made the change on the PLC or HMI, where it says


@dataclass(frozen=True, slots=True)
class PlcAcknowledge:
    """An operator's acknowledgement of a PLC's alarm, to be passed to the PLC's condition (alarms -> collect)."""

    condition_id: str
    event_id: str  # hex, the newest EventId the PLC sent for the condition
    actor: str
    comment: str


@dataclass(slots=True)
class AlarmEvent:
    """A transition of an alarm, as it goes to the events topic and the audit trail."""

    alarm_id: str
    ts: float
    event: str  # raised, acknowledged, returned, cleared, shelved, unshelved, realarm, escalated, grouped, ...
    state: AlarmState
    alarm: Alarm
    actor: str | None = None
    comment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alarm_id": self.alarm_id,
            "ts": self.ts,
            "event": self.event,
            "state": self.state.value,
            "actor": self.actor,
            "comment": self.comment,
            "alarm": self.alarm.to_dict(),
        }


@dataclass(slots=True)
class Evidence:
    """A piece of evidence a diagnosis may cite: a signal with its value, or a runbook passage."""

    kind: str  # "signal" or "runbook"
    ref: str  # signal key "asset.signal" or runbook id "RB-PUMP-002#checks"
    detail: str = ""
    value: float | None = None


@dataclass(slots=True)
class Cause:
    fault_type: str
    title: str
    confidence: float
    evidence: list[Evidence] = field(default_factory=list)
    origin: str = "runbook"  # "model" or "runbook"


@dataclass(slots=True)
class Step:
    """A recommended check or corrective action, in order."""

    text: str
    kind: str = "action"  # "check" or "action"
    runbook_id: str | None = None
    origin: str = "runbook"


@dataclass(slots=True)
class Diagnosis:
    """What the copilot says about an alarm; every citation points to evidence that exists."""

    alarm_id: str
    summary: str
    causes: list[Cause]
    steps: list[Step]
    safety: list[str]
    would_change: list[str]
    origin: str  # "model" or "runbook"
    created_at: float = field(default_factory=time.time)
    model: str | None = None
    dropped_citations: int = 0
    fallback_reason: str | None = None
    latency_s: float | None = None
    asset: str | None = None  # the alarm's asset: where the diagnosis is published (None: read before it was kept)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Diagnosis":
        d = {k: v for k, v in d.items() if k in _fields(cls)}
        d["causes"] = [
            Cause(**{**c, "evidence": [Evidence(**e) for e in c.get("evidence", [])]}) for c in d["causes"]
        ]
        d["steps"] = [Step(**s) for s in d["steps"]]
        return cls(**d)


@functools.cache  # a record's fields never change; from_dict runs for every stored alarm and event read back
def _fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


class CommandKind(str, enum.Enum):
    """What an operator may ask of an alarm: the one list the engine, the command schema and the dashboard use."""

    ACKNOWLEDGE = "acknowledge"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    OUT_OF_SERVICE = "out_of_service"
    RETURN_TO_SERVICE = "return_to_service"

    @classmethod
    def named(cls, text: object) -> "CommandKind | None":
        """The kind ``text`` names, or None: an unknown command is refused with a reply, never raised."""
        try:
            return cls(text)
        except ValueError:
            return None


@dataclass(slots=True)
class OperatorCommand:
    """An operator's request to the alarm engine (from the dashboard or the MQTT command topic)."""

    command: str  # a CommandKind value (kept a string: an unknown one is refused by the engine with a reply)
    alarm_id: str
    actor: str
    comment: str | None = None
    shelve_s: float | None = None  # shelving duration; shelving always expires
    request_id: str | None = None
    ts: float = field(default_factory=time.time)


@dataclass(slots=True)
class OperatorFeedback:
    """An operator's verdict on an alarm as it arrives from their own ``commands/<user>`` level (feedback/1):
    ``actor`` is that level's MQTT user, never the payload's. The alarm station authorises it under the line's
    roles, audits it and gives the ``Feedback`` the store writes."""

    alarm_id: str
    verdict: str  # one of FEEDBACK_VERDICTS (the schema refuses another)
    actor: str
    actual_cause: str | None = None
    fix: str | None = None
    request_id: str | None = None
    ts: float = field(default_factory=time.time)


@dataclass(slots=True)
class CommandResult:
    request_id: str | None
    ok: bool
    message: str
    alarm: Alarm | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "ok": self.ok,
            "message": self.message,
            "alarm": self.alarm.to_dict() if self.alarm else None,
        }


FEEDBACK_VERDICTS = ("confirmed", "false_alarm", "other_cause")


@dataclass(slots=True)
class Feedback:
    """An operator's verdict on an alarm: the cause confirmed, a false alarm, or another cause (with the fix)."""

    alarm_id: str
    verdict: str = "confirmed"  # one of FEEDBACK_VERDICTS
    actual_cause: str | None = None  # fault id or free text, for "other_cause" (and "confirmed" if it differs)
    fix: str | None = None
    actor: str | None = None
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.verdict not in FEEDBACK_VERDICTS:
            raise ValueError(f"feedback verdict {self.verdict!r} is not one of {', '.join(FEEDBACK_VERDICTS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Feedback":
        return cls(**{k: v for k, v in d.items() if k in _fields(cls)})


@dataclass(slots=True)
class MarkedAlarm:
    """An alarm with an operator's verdict and the anomalies that raised it (what the detector is retuned from)."""

    alarm_id: str
    asset: str
    condition: str
    start: float
    end: float
    marked_at: float
    verdict: str  # one of FEEDBACK_VERDICTS
    actor: str | None = None
    anomalies: list[Anomaly] = field(default_factory=list)


@dataclass(slots=True)
class Turn:
    """One turn of the ask-the-copilot conversation about an alarm."""

    alarm_id: str
    role: str  # "operator" or "copilot"
    text: str
    ts: float = field(default_factory=time.time)
    actor: str | None = None
    request_id: str | None = None
    origin: str | None = None  # for copilot turns: "model" or "runbook"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Incident:
    """A past alarm with the operator's verdict: the copilot's memory for similar alarms later."""

    alarm_id: str
    asset: str
    fault_type: str | None
    verdict: str
    ts: float
    condition: str = ""
    signals: list[str] = field(default_factory=list)  # signal keys that stood out, largest share first
    actual_cause: str | None = None
    fix: str | None = None
    actor: str | None = None
    diagnosis_summary: str | None = None
    similarity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rank_incidents(incidents: "Iterable[Incident]", asset: str, fault_type: str | None, signals: list[str],
                   limit: int = 3) -> list[Incident]:
    """The past incidents most like this alarm, best first, each with its ``similarity`` (0..1).

    Same asset counts 1, same fault type 2, the overlap of the signals that stood out up to 1;
    an incident on another asset says nothing about this one and is left out.
    """
    wanted = set(signals)
    scored = []
    for inc in incidents:
        overlap = len(wanted & set(inc.signals)) / max(1, len(wanted | set(inc.signals)))
        score = (inc.asset == asset) * 1.0 + (fault_type is not None and inc.fault_type == fault_type) * 2.0 + overlap
        if score >= 1.0:
            scored.append((score, inc))
    scored.sort(key=lambda si: (-si[0], -si[1].ts))
    return [dataclasses.replace(inc, similarity=round(score / 4.0, 3)) for score, inc in scored[:limit]]


@dataclass(slots=True, frozen=True)
class DiagnosisChunk:
    """A piece of a diagnosis as the model writes it (``done`` on the last), streamed to the operator."""

    alarm_id: str
    text: str
    done: bool = False


@dataclass(slots=True, frozen=True)
class AnswerChunk:
    """A piece of the copilot's answer to a question; the last (``done``) carries the whole text, or the error.

    With a model, the runbook's answer goes out first, at once, as a chunk that is not ``done`` with its
    ``full_text`` and ``origin`` "runbook"; the model's words follow, and the last chunk says which answer stands.
    """

    request_id: str
    alarm_id: str | None
    text: str
    done: bool = False
    full_text: str | None = None
    error: str | None = None
    origin: str | None = None  # "model" or "runbook", on chunks that carry a whole answer


@dataclass(slots=True, frozen=True)
class ModelJob:
    """Where a job for the model stands, for whoever waits on it: the model's diagnosis of an alarm, or its answer.

    ``state``: ``queued`` (``position`` jobs before it, 0 = next), ``running``, ``done`` or ``dropped`` (``detail``
    says why; the runbook's diagnosis or answer stands). ``estimate_s``: seconds from ``ts`` until it is expected
    complete, from the model's recent jobs (None while the model loads or before one was measured). ``since``:
    when the wait began, on the pipeline's clock (the alarm event's time, the question's).
    """

    job: str  # "diagnosis" or "answer"
    alarm_id: str | None
    state: str
    position: int
    waiting: int  # jobs queued in all (not counting the one running)
    estimate_s: float | None
    since: float
    ts: float
    request_id: str | None = None  # for an answer: the question's
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Question:
    """An operator's question to the copilot (from the dashboard over MQTT), answered in streamed chunks."""

    request_id: str = ""
    alarm_id: str | None = None  # None for a question about the line in general
    question: str = ""
    actor: str = ""
    ts: float = field(default_factory=time.time)


@dataclass(slots=True, frozen=True)
class HeldAlarms:
    """The alarms the engine holds (not NORMAL) when its station starts: alarm id -> asset.

    The publish station reconciles the broker with it: a retained alarm or diagnosis message for an
    alarm the engine does not hold is a ghost from an earlier run, and is cleared.
    """

    alarms: dict[str, str]
    ts: float = field(default_factory=time.time)


@dataclass(slots=True)
class Handover:
    """A shift handed over: what the shift that ended leaves the incoming one, written from the store (``shift/``).

    ``body`` is the ``handover/1`` payload (sections of sentences, each citing the alarm and audit rows it
    comes from); ``acknowledged`` lists who of the incoming shift read it (actor, ts, comment), oldest first.
    """

    handover_id: str  # "<date>/<shift>", the date the shift started on, in the line's time zone
    shift: str
    date: str
    start: float
    end: float
    written_at: float
    body: dict[str, Any]
    acknowledged: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class HandoverAck:
    """The incoming operator's acknowledgement of a handover, from their own command level (``commands/<user>``)."""

    handover_id: str
    actor: str
    comment: str | None = None
    request_id: str | None = None
    ts: float = field(default_factory=time.time)
