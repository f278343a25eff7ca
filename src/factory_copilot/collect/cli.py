"""The ``collect`` and ``browse`` commands, for commissioning a line: see what arrives, and start a line file."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import MqttConnection, OpcuaConnection, load_line
from factory_copilot.records import Reading, SourceState
from factory_copilot.cli import parse_user
from factory_copilot.plumbing.signals import stop_on_signals

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "collect",
        help="collect readings from a line over OPC UA, Sparkplug B or MQTT and print them (or the collector stats)",
        description="Print the readings a line delivers, as JSON lines, or the collector's stats every few seconds.",
    )
    c.add_argument("--config", required=True, help="line file")
    c.add_argument("--source", choices=["opcua", "sparkplug", "mqtt"], required=True)
    c.add_argument("--stats", action="store_true", help="print stats every --every seconds instead of readings")
    c.add_argument("--every", type=float, default=5.0)
    c.add_argument("--duration", type=float, help="stop after this many seconds")
    c.add_argument("--count", type=int, help="stop after this many readings")
    c.add_argument("--endpoint", help="OPC UA endpoint (overrides the line file)")
    c.add_argument("--mqtt-host")
    c.add_argument("--mqtt-port", type=int)
    c.add_argument("--pattern", action="append", default=[], help="MQTT topic pattern like factory/+/+/{asset}/{signal} (repeatable)")
    c.add_argument("--pki-dir", help="client certificate directory for OPC UA security")
    c.add_argument("--security", choices=["none", "basic256sha256_sign_encrypt"], help="OPC UA security (overrides the line file)")
    c.add_argument("--user", type=parse_user, metavar="NAME:PASSWORD", help="OPC UA or MQTT user (overrides the line file)")
    c.set_defaults(func=collect)

    b = sub.add_parser(
        "browse",
        help="browse an OPC UA server, or listen to a Sparkplug B group, and print a starting line file",
        description="OPC UA: folders become assets, variables become signals (unit from EngineeringUnits). "
                    "Sparkplug B (--sparkplug URL --group G): devices become assets, metrics signals (unit from "
                    "engUnit), from the births heard (edge nodes already online are asked for a Rebirth). "
                    "Normal bands are TODO placeholders.",
    )
    b.add_argument("endpoint", nargs="?", help="opc.tcp://host:port/path")
    b.add_argument("--sparkplug", metavar="URL", help="mqtt://HOST:PORT (mqtts:// for TLS) of a Sparkplug B broker")
    b.add_argument("--group", help="the Sparkplug group id to browse (with --sparkplug)")
    b.add_argument("--wait", type=float, default=10.0, help="seconds to listen for births (with --sparkplug)")
    b.add_argument("--no-rebirth", action="store_true", help="only listen: do not ask edge nodes for their births")
    b.add_argument("--site", default="TODO-site")
    b.add_argument("--line", default="TODO-line")
    b.add_argument("--user", type=parse_user, metavar="NAME:PASSWORD")
    b.add_argument("--security", choices=["none", "basic256sha256_sign_encrypt"], default="none")
    b.add_argument("--output", "-o", help="write the line file here instead of printing it")
    b.set_defaults(func=browse)


async def collect(args: argparse.Namespace) -> int:
    from factory_copilot.collect.mqtt import MqttCollector
    from factory_copilot.collect.opcua import OpcuaCollector, OpcuaConnectError
    from factory_copilot.collect.sparkplug import SparkplugCollector

    line = load_line(args.config)
    buffer: Buffer[Reading] = Buffer(100_000, name="collect")
    if args.source == "opcua":
        conn = line.opcua or OpcuaConnection()
        overrides = {"endpoint": args.endpoint, "security": args.security}
        if args.user:
            overrides |= {"username": args.user[0], "password": args.user[1]}
        conn = conn.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        collector = OpcuaCollector(line, buffer, conn, pki_dir=args.pki_dir)
    else:
        conn = line.sparkplug_broker if args.source == "sparkplug" else line.mqtt or MqttConnection()
        overrides = {"host": args.mqtt_host, "port": args.mqtt_port}
        if args.user:
            overrides |= {"username": args.user[0], "password": args.user[1]}
        conn = conn.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        if args.source == "sparkplug":
            collector = SparkplugCollector(line, buffer, conn)
        else:
            collector = MqttCollector(line, buffer, conn, patterns=args.pattern)
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    if args.duration:
        loop.call_later(args.duration, stop.set)
    task = asyncio.create_task(collector.run(stop))
    printed = 0
    next_stats = time.monotonic() + args.every
    try:
        while not stop.is_set():
            if task.done():
                break
            try:
                reading = await asyncio.wait_for(buffer.get(), 0.2)
            except asyncio.TimeoutError:
                reading = None
            if isinstance(reading, SourceState):
                continue  # the collector logs its connection changes itself
            if reading is not None and not args.stats:
                print(json.dumps(reading.to_dict()), flush=True)
                printed += 1
                if args.count and printed >= args.count:
                    break
            if args.stats and time.monotonic() >= next_stats:
                print(json.dumps(collector.stats()), flush=True)
                next_stats += args.every
    finally:
        stop.set()
        try:
            await task
        except OpcuaConnectError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.stats:
        print(json.dumps(collector.stats()), flush=True)
    return 0


async def browse(args: argparse.Namespace) -> int:
    from factory_copilot.collect.browse import browse_line
    from factory_copilot.collect.opcua import OpcuaConnectError

    if args.sparkplug:
        return await _browse_sparkplug(args)
    if not args.endpoint:
        print("error: browse needs an OPC UA endpoint, or --sparkplug URL --group G", file=sys.stderr)
        return 2

    conn = OpcuaConnection(
        endpoint=args.endpoint,
        security=args.security,
        username=args.user[0] if args.user else None,
        password=args.user[1] if args.user else None,
    )
    try:
        text = await browse_line(args.endpoint, site=args.site, line=args.line, connection=conn)
    except OpcuaConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from factory_copilot.collect.browse import BANDS_WARNING

    _write(text, args.output)
    print(f"warning: {BANDS_WARNING}", file=sys.stderr)
    return 0


async def _browse_sparkplug(args: argparse.Namespace) -> int:
    from factory_copilot.collect.browse_sparkplug import browse_sparkplug

    if not args.group:
        print("error: --sparkplug needs --group (the Sparkplug group id to browse)", file=sys.stderr)
        return 2
    try:
        text = await asyncio.to_thread(
            browse_sparkplug, args.sparkplug, args.group, seconds=args.wait, rebirth=not args.no_rebirth,
            site=args.site, line=args.line, username=args.user[0] if args.user else None,
            password=args.user[1] if args.user else None)
    except (ValueError, LookupError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _write(text, args.output)
    return 0


def _write(text: str, output: str | None) -> None:
    """The browsed line file to ``output``, or to stdout."""
    if output:
        Path(output).write_text(text)
        log.info("wrote %s", output)
    else:
        sys.stdout.write(text)
