"""The gate every source sample passes before it becomes a Reading: values, timestamps and JSON, checked once.

Whatever a source sends - an MQTT payload, an OPC UA DataValue, a Sparkplug metric - is
turned into a Reading here or rejected with a named reason. A rejection is counted by
reason and logged at most once per reason per interval, naming the topic or node; it
never raises into a client's thread and never reaches a station:

* a value must be a finite float: huge integers (a 5,000-digit number), booleans,
  strings, NaN and infinities are rejected (``not_finite``, ``not_a_number``);
* a timestamp more than ``max_future_s`` ahead of the clock (a PLC whose clock jumped)
  or more than ``max_age_s`` behind it is rejected as ``clock_skew``: it must never
  move the detector's clock;
* JSON is size- and depth-limited before it is parsed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any, Callable

from factory_copilot.plumbing import safejson
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.plumbing.opcua import quality_of
from factory_copilot.records import Quality, Reading
from factory_copilot.errors import FactoryCopilotError

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "oversized",
    "too_deep",
    "not_json",
    "not_an_object",
    "missing_field",
    "not_a_number",
    "not_finite",
    "bad_timestamp",
    "clock_skew",
    "bad_quality",
    "unknown_topic",
    "unknown_node",
    "not_decodable",
    "unknown_metric",  # Sparkplug: an alias or metric name its edge node's birth did not declare
    "before_birth",  # Sparkplug: data of an edge node or device whose birth this host has not seen
)
_QUALITY_WORDS = {"good": Quality.GOOD, "uncertain": Quality.UNCERTAIN, "bad": Quality.BAD}


class BadSample(FactoryCopilotError, ValueError):
    """A sample the gate will not let through; ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


def parse_json(raw: bytes | str, max_bytes: int, max_depth: int = safejson.MAX_DEPTH) -> Any:
    """JSON from outside, or BadSample: size and depth checked first, huge integers and NaN refused."""
    try:
        return safejson.loads(raw, max_bytes, max_depth)
    except safejson.BadJson as exc:
        raise BadSample(exc.reason, exc.detail) from None


def finite_value(raw: object, what: str = "value") -> float:
    """A process value as a finite float, or BadSample (booleans and text are not process values)."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        shown = printable(repr(raw), 40)
        raise BadSample("not_a_number", f"{what} is {type(raw).__name__} {shown}, not a number")
    try:
        value = float(raw)
    except OverflowError:
        raise BadSample("not_finite", f"{what} is beyond the range of a float") from None
    if not math.isfinite(value):
        raise BadSample("not_finite", f"{what} is {value}")
    return value


def parse_quality(raw: object) -> Quality:
    """Quality from a payload: a word (good/uncertain/bad) or a numeric OPC UA StatusCode."""
    if isinstance(raw, str):
        q = _QUALITY_WORDS.get(raw.strip().lower())
        if q is None:
            raise BadSample("bad_quality", f"quality {printable(raw, 40)!r} is not good, uncertain or bad")
        return q
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 0xFFFFFFFF:
        return quality_of(raw)
    raise BadSample("bad_quality", f"quality {printable(repr(raw), 40)} is not a word or a status code")


def parse_timestamp(raw: object) -> float:
    """Epoch seconds (or milliseconds, as gateways often send) or ISO 8601 text with a zone, as epoch seconds."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        try:
            ts = float(raw)
        except OverflowError:
            ts = math.inf
        if not math.isfinite(ts) or ts <= 0:
            raise BadSample("bad_timestamp", f"timestamp {printable(repr(raw), 40)} is not a positive epoch time")
        return ts / 1000.0 if ts > 1e11 else ts
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise BadSample("bad_timestamp", f"timestamp {printable(raw, 40)!r} is not ISO 8601") from None
        if dt.tzinfo is None:
            raise BadSample("bad_timestamp", f"timestamp {printable(raw, 40)!r} has no time zone")
        return dt.timestamp()
    raise BadSample("bad_timestamp", f"timestamp {printable(repr(raw), 40)} is not a number or ISO 8601 text")


class SampleGate:
    """Checks timestamps against the clock and counts every rejection by reason (thread-safe).

    ``clock`` is the pipeline's clock: wall time live, data time when replaying a recording.
    """

    def __init__(
        self,
        max_future_s: float = 5.0,
        max_age_s: float = 86400.0,
        clock: Callable[[], float] = time.time,
        log_every_s: float = 10.0,
        source: str = "",
        logger: logging.Logger = log,
    ):
        self.max_future_s = max_future_s
        self.max_age_s = max_age_s
        self.clock = clock
        self.source = source
        self.rejects: Counter[str] = Counter()
        self.accepted = 0
        self._lock = threading.Lock()
        self._throttle = Throttled(logger, log_every_s)

    def check_time(self, ts: float, now: float | None = None) -> float:
        """``ts`` if it is plausible against the clock, else BadSample('clock_skew')."""
        now = self.clock() if now is None else now
        if ts > now + self.max_future_s:
            raise BadSample("clock_skew", f"timestamp {_iso(ts)} is {ts - now:.1f} s ahead of the clock "
                                         f"(more than {self.max_future_s:g} s): check the source's clock")
        if ts < now - self.max_age_s:
            raise BadSample("clock_skew", f"timestamp {_iso(ts)} is {now - ts:.0f} s old "
                                         f"(more than {self.max_age_s:g} s): check the source's clock")
        return ts

    def reading(self, ts: float, asset: str, signal: str, value: object, quality: Quality, unit: str = "",
                now: float | None = None) -> Reading:
        """A Reading from checked parts; BAD quality carries no value."""
        ts = self.check_time(ts, now)
        if quality is Quality.BAD:
            v = None
        elif value is None:
            raise BadSample("not_a_number", "value is null but quality is not bad")
        else:
            v = finite_value(value)
        return Reading(ts, asset, signal, v, quality, self.source, unit)

    def reject(self, reason: str, where: str, detail: str = "") -> None:
        """Count a rejection and name it in the log (once per reason per interval)."""
        with self._lock:
            self.rejects[reason] += 1
        self._throttle.warning(reason, "%s sample rejected (%s) on %s: %s", self.source or "source", reason,
                               printable(where), detail or reason)

    def accept(self, n: int = 1) -> None:
        with self._lock:
            self.accepted += n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"accepted": self.accepted, "rejected": sum(self.rejects.values()),
                    "rejects": {k: v for k, v in self.rejects.items() if v}}


def _iso(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return repr(ts)
