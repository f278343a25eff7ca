"""``factory-copilot alerts tail``: print the line's alarms and diagnoses as they arrive, one readable line each.

A late start still shows every active alarm, because alarm states and diagnoses are retained on the
broker. The broker hands retained messages over in its own order (by topic), so ``Tail`` holds that first
burst back and prints it in time order. Like the dashboard, it shows one alarm per situation: a consequence
folded under its root (``parent_id``, ``suppressed``: recorded, not rung) is counted on its root's line,
and shown indented under it only with ``--folded``. Live messages follow in the order they come.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import paho.mqtt.client as paho

from factory_copilot.plumbing.logs import printable
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.config import MqttConnection
from factory_copilot.publish import payloads
from factory_copilot.names import DEFAULT_PREFIX
from factory_copilot.publish.topics import Topics, TopicParts, parse

SETTLE_S = 0.5  # no retained message for this long after subscribing: the broker's burst of them is over
FOLDED = "  └ "


def _clock(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) + "Z"
    except (TypeError, ValueError, OverflowError):
        return "-" * 20


@dataclass
class _Message:
    """One message of the scheme, read once: its topic's parts and its payload (None: an empty, clearing one)."""

    parts: TopicParts
    topic: str
    body: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def ts(self) -> float:
        body = self.body or {}
        for key in ("updated_at", "created_at", "ts", "published_at"):
            if isinstance(body.get(key), (int, float)):
                return float(body[key])
        return time.time()

    @property
    def alarm_id(self) -> str | None:
        return self.parts.alarm_id


def _read(topic: str, raw: bytes, prefix: str) -> _Message | None:
    parts = parse(topic, prefix)
    if parts is None or parts.kind not in ("alarm", "diagnosis", "status"):
        return None
    if not raw:
        return _Message(parts, topic, None)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    found = payloads.problems(body) if isinstance(body, dict) else ["payload is not a JSON object"]
    return _Message(parts, topic, body if not found else None, found)


def _render(m: _Message, indent: str = "", folded: int = 0) -> str:
    where = f"{m.parts.site}/{m.parts.line}"
    if m.problems:
        return f"{_clock(time.time())}  INVALID payload on {m.topic}: {'; '.join(m.problems)[:300]}"
    body = m.body
    if body is None:
        what = "alarm" if m.parts.kind == "alarm" else "diagnosis"
        return (f"{_clock(time.time())}  {indent}{'cleared':<8}  {'normal':<24}  {m.parts.asset:<16}  "
                f"{what} {m.alarm_id} cleared ({where})")
    if m.parts.kind == "status":
        return f"{_clock(body['ts'])}  publisher {body['state']} for {where} (version {body['version']}, client {body['client_id']})"
    if m.parts.kind == "alarm":
        flags = [f for f, on in (("folded under " + str(body.get("parent_id")), body.get("parent_id")),
                                 ("suppressed", body.get("suppressed") and not body.get("parent_id")),
                                 ("shelved", body.get("shelved_until")),
                                 ("out-of-service", body.get("out_of_service"))) if on]
        note = f" [{', '.join(flags)}]" if flags else ""
        more = f" (+{folded} folded)" if folded else ""
        return (f"{_clock(body['updated_at'])}  {indent}{body['priority'].upper():<8}  {body['state']:<24}  "
                f"{body['asset']:<16}  {body['message']}{note}  ({body['alarm_id']}){more}")
    origin = body[payloads.WIRE_ORIGIN]  # model or runbook
    return (f"{_clock(body['created_at'])}  {indent}{'DIAGNOSE':<8}  {origin:<24}  {body['asset']:<16}  "
            f"{body['summary']}  ({body['alarm_id']})")


def describe(topic: str, raw: bytes, prefix: str = DEFAULT_PREFIX) -> str | None:
    """One readable line for a message of the scheme, None for topics tail does not show (events, streams, commands)."""
    m = _read(topic, raw, prefix)
    return _render(m) if m is not None else None


class Tail:
    """What ``alerts tail`` prints for the messages it gets (thread-safe: paho's thread feeds it, the loop flushes).

    ``take`` returns the lines to print now: nothing while the retained burst after a (re)subscription is held
    back; ``flush`` ends that burst and returns it in time order, each consequence under its root.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, folded: bool = False):
        self.prefix = prefix
        self.folded = folded
        self.parents: dict[str, str | None] = {}  # alarm id -> the root it is folded under (None: a root)
        self.active_folded: dict[str, str] = {}  # consequences not normal -> their root: the count on its line
        self._held: list[_Message] = []
        self._holding = True
        self.last_held = time.monotonic()
        self._lock = threading.Lock()

    @property
    def holding(self) -> bool:
        return self._holding

    def resubscribed(self) -> None:
        """A new subscription: the broker sends every retained message again, to be shown as one snapshot."""
        with self._lock:
            self._holding, self.last_held = True, time.monotonic()

    def take(self, topic: str, raw: bytes, retained: bool) -> list[str]:
        m = _read(topic, raw, self.prefix)
        if m is None:
            return []
        with self._lock:
            if self._holding and retained:
                self._held.append(m)
                self.last_held = time.monotonic()
                return []
            lines = self._flush() if self._holding else []
            return lines + self._live(m)

    def flush(self) -> list[str]:
        with self._lock:
            return self._flush() if self._holding else []

    def _parent(self, m: _Message) -> str | None:
        """The root a message's alarm is folded under (a diagnosis goes with its alarm); follows the alarm's state."""
        alarm_id = m.alarm_id or ""
        if m.parts.kind != "alarm":
            return self.parents.get(alarm_id)
        # a cleared alarm (empty payload) was folded if its last state was
        parent = self.parents.get(alarm_id) if m.body is None else (m.body.get("parent_id") or None)
        self.parents[alarm_id] = parent
        if m.body is not None and m.body.get("state") != "normal" and parent is not None:
            self.active_folded[alarm_id] = parent
        else:
            self.active_folded.pop(alarm_id, None)
        return parent

    def _count(self, m: _Message) -> int:
        """How many active consequences are folded under a root alarm's line."""
        if self.folded or m.parts.kind != "alarm" or m.body is None:
            return 0
        return sum(1 for p in self.active_folded.values() if p == m.alarm_id)

    def _live(self, m: _Message) -> list[str]:
        parent = self._parent(m)
        if parent is not None:
            return [_render(m, FOLDED)] if self.folded else []
        return [_render(m, folded=self._count(m))]

    def _flush(self) -> list[str]:
        held, self._held, self._holding = self._held, [], False
        held.sort(key=lambda m: m.ts)  # the broker's order is its topic tree's, not the alarms'
        for m in held:
            self._parent(m)
        roots = {m.alarm_id for m in held if m.parts.kind == "alarm" and m.body is not None
                 and self.parents.get(m.alarm_id or "") is None}
        under: dict[str, list[_Message]] = {}  # root id -> its consequences' messages (alarms and diagnoses)
        lines: list[str] = []
        for m in held:
            parent = self.parents.get(m.alarm_id or "") if m.parts.kind != "status" else None
            if parent in roots:
                under.setdefault(parent, []).append(m)
        placed: set[str] = set()
        for m in held:
            parent = self.parents.get(m.alarm_id or "") if m.parts.kind != "status" else None
            if parent in roots:
                continue  # goes under its root
            if m.parts.kind == "status" or m.alarm_id not in roots:
                lines.append(_render(m))  # a status, or a consequence whose root is not on the broker: on its own
                continue
            if m.alarm_id in placed:
                continue
            placed.add(m.alarm_id)
            group = [x for x in held if x.alarm_id == m.alarm_id and x.parts.kind != "status"]  # the alarm, then
            group.sort(key=lambda x: x.parts.kind != "alarm")  # its diagnosis
            lines += [_render(x, folded=self._count(x)) for x in group]
            if self.folded:
                lines += [_render(x, FOLDED) for x in under.get(m.alarm_id, [])]
        folded = sum(1 for xs in under.values() for x in xs if x.parts.kind == "alarm")
        summary = f"-- {len(roots)} alarm(s) on the broker"
        if folded:
            summary += f", {folded} folded under their cause" + ("" if self.folded else " (--folded shows them)")
        return lines + [summary]


def follow(
    conn: MqttConnection, topics: Topics, out: TextIO = sys.stdout, count: int | None = None,
    on_ready: Callable[[], None] | None = None, folded: bool = False, settle_s: float = SETTLE_S,
) -> int:
    """Subscribe to the alarm, diagnosis and status topics and print until interrupted (or ``count`` lines)."""
    printed = 0
    done = threading.Event()
    tail = Tail(topics.prefix, folded)

    def show(lines: list[str]) -> None:
        nonlocal printed
        for line in lines:
            # whatever a publisher put in a message reaches a terminal here: control characters escaped
            print(printable(line, 4000), file=out, flush=True)
            if not line.startswith("-- "):
                printed += 1
            if count is not None and printed >= count:
                done.set()

    def on_message(msg: paho.MQTTMessage) -> None:
        show(tail.take(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on_up() -> None:
        tail.resubscribed()
        if on_ready is not None:
            on_ready()

    def on_down(why: str) -> None:
        print(f"broker {conn.host}:{conn.port}: {why}; reconnecting", file=sys.stderr)

    session = MqttSession(
        conn, role="tail", subscriptions=[(topics.all_alarms(), 1), (topics.all_diagnoses(), 1), (topics.status(), 1)],
        on_message=on_message, on_up=on_up, on_down=on_down,
    ).start()
    try:
        while not done.wait(0.1):
            if tail.holding and session.connected and time.monotonic() - tail.last_held >= settle_s:
                show(tail.flush())
    except KeyboardInterrupt:
        pass
    finally:
        session.stop()
    return 0


def _tail(args: argparse.Namespace) -> int:
    conn = MqttConnection(
        host=args.host, port=args.port, protocol=args.protocol, username=args.username, password=args.password, tls=args.tls
    )
    return follow(conn, Topics(args.site, args.line, args.prefix), count=args.count, folded=args.folded)


def register(subparsers: argparse._SubParsersAction) -> None:
    alerts = subparsers.add_parser("alerts", help="follow the alarms the publisher puts on MQTT")
    commands = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    tail = commands.add_parser("tail", help="print alarms and diagnoses as they arrive, one line each")
    tail.add_argument("--host", default="127.0.0.1")
    tail.add_argument("--port", type=int, default=1883)
    tail.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    tail.add_argument("--site", default="+", help="site to follow (default: every site)")
    tail.add_argument("--line", default="+", help="line to follow (default: every line)")
    tail.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    tail.add_argument("--username")
    tail.add_argument("--password")
    tail.add_argument("--tls", action="store_true")
    tail.add_argument("--count", type=int, help="exit after printing this many alarm, diagnosis or status lines")
    tail.add_argument("--folded", action="store_true",
                      help="also show the consequences folded under their root alarm (recorded, not rung), indented "
                           "under it; without it they are only counted on the root's line, as the dashboard does")
    tail.set_defaults(func=_tail)
