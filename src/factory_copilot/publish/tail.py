"""``factory-copilot alerts tail``: print the line's alarms and diagnoses as they arrive, one readable line each.

A late start still shows every active alarm, because alarm states and
diagnoses are retained on the broker.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, Callable, TextIO

import paho.mqtt.client as paho

from factory_copilot.plumbing.logs import printable
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.config import MqttConnection
from factory_copilot.publish import payloads
from factory_copilot.publish.topics import DEFAULT_PREFIX, Topics, parse


def _clock(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) + "Z"
    except (TypeError, ValueError, OverflowError):
        return "-" * 20


def describe(topic: str, raw: bytes, prefix: str = DEFAULT_PREFIX) -> str | None:
    """One readable line for a message of the scheme, None for topics tail does not show (events, streams, commands)."""
    parts = parse(topic, prefix)
    if parts is None or parts.kind not in ("alarm", "diagnosis", "status"):
        return None
    where = f"{parts.site}/{parts.line}"
    if not raw:
        what = "alarm" if parts.kind == "alarm" else "diagnosis"
        return f"{_clock(time.time())}  {'cleared':<8}  {'normal':<24}  {parts.asset:<16}  {what} {parts.alarm_id} cleared ({where})"
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    found = payloads.problems(body) if isinstance(body, dict) else ["payload is not a JSON object"]
    if found:
        return f"{_clock(time.time())}  INVALID payload on {topic}: {'; '.join(found)[:300]}"
    if parts.kind == "status":
        return f"{_clock(body['ts'])}  publisher {body['state']} for {where} (version {body['version']}, client {body['client_id']})"
    if parts.kind == "alarm":
        flags = [f for f, on in (("shelved", body.get("shelved_until")), ("out-of-service", body.get("out_of_service"))) if on]
        note = f" [{', '.join(flags)}]" if flags else ""
        return (
            f"{_clock(body['updated_at'])}  {body['priority'].upper():<8}  {body['state']:<24}  {body['asset']:<16}  "
            f"{body['message']}{note}  ({body['alarm_id']})"
        )
    return f"{_clock(body['created_at'])}  {'DIAGNOSE':<8}  {body['source']:<24}  {body['asset']:<16}  {body['summary']}  ({body['alarm_id']})"


def follow(
    conn: MqttConnection, topics: Topics, out: TextIO = sys.stdout, count: int | None = None, on_ready: Callable[[], None] | None = None
) -> int:
    """Subscribe to the alarm, diagnosis and status topics and print until interrupted (or ``count`` lines)."""
    printed = 0
    done = threading.Event()

    def on_message(msg: paho.MQTTMessage) -> None:
        nonlocal printed
        line = describe(msg.topic, bytes(msg.payload), topics.prefix)
        if line is None:
            return
        # whatever a publisher put in a message reaches a terminal here: control characters escaped
        print(printable(line, 4000), file=out, flush=True)
        printed += 1
        if count is not None and printed >= count:
            done.set()

    def on_down(why: str) -> None:
        print(f"broker {conn.host}:{conn.port}: {why}; reconnecting", file=sys.stderr)

    session = MqttSession(
        conn, role="tail", subscriptions=[(topics.all_alarms(), 1), (topics.all_diagnoses(), 1), (topics.status(), 1)],
        on_message=on_message, on_up=on_ready, on_down=on_down,
    ).start()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        session.stop()
    return 0


def _tail(args: argparse.Namespace) -> int:
    conn = MqttConnection(
        host=args.host, port=args.port, protocol=args.protocol, username=args.username, password=args.password, tls=args.tls
    )
    return follow(conn, Topics(args.site, args.line, args.prefix), count=args.count)


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
    tail.add_argument("--count", type=int, help="exit after printing this many lines")
    tail.set_defaults(func=_tail)
