"""Fuzz benchmark: random payloads through the MQTT collector beside good readings, for a minute.

A second process publishes good readings (each value a sequence number, on the line's own
topics) and, beside them, N random payloads a second: broken and hostile JSON, huge numbers,
deep nesting, wrong types, skewed timestamps, binary noise, unknown topics. This process runs
the collector (a real Mosquitto in between) and counts what comes out. Prints the rejects by
reason, the good readings lost (must be 0), the collector's crashes (callback errors, a dead
session) and the growth of this process's memory; last line:

    fuzz: <n> payloads, <c> crashes, <k> good readings lost, rss +<m> MiB

    python bench/fuzz.py [--seconds 60] [--rate 500] [--good-rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from factory_copilot.collect.mqtt import MqttCollector  # noqa: E402
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line  # noqa: E402
from factory_copilot.plumbing.buffer import Buffer  # noqa: E402
from factory_copilot.records import Reading  # noqa: E402

GOOD_TOPIC_KEY = "filler.tank_level"


def hostile(rng: random.Random, topics: list[str], now: float) -> tuple[str, bytes]:
    """One random bad (or merely odd) payload, on a line topic or a made-up one."""
    # (a topic with control characters makes the broker drop the sender, so it never reaches a subscriber: not sent)
    topic = rng.choice(topics) if rng.random() < 0.8 else rng.choice(["x/y", "factory/#", "a" * 300, "\u2028/ünïcode"])
    kind = rng.randrange(12)
    if kind == 0:
        body = rng.randbytes(rng.randrange(0, 400))
    elif kind == 1:
        body = b'{"value": ' + b"9" * rng.randrange(20, 6000) + b"}"
    elif kind == 2:
        body = b"[" * rng.randrange(33, 60_000)
    elif kind == 3:
        body = json.dumps({"value": rng.choice(["3.5", None, True, [1], {"v": 1}])}).encode()
    elif kind == 4:
        body = json.dumps({"value": 1.0, "ts": rng.choice([4102444800, -1, 0, now + 3600, now - 10 * 86400, "soon"])}).encode()
    elif kind == 5:
        body = rng.choice([b'{"value": NaN}', b'{"value": Infinity}', b'{"value": 1e999}'])
    elif kind == 6:
        body = json.dumps({"value": 1.0, "quality": rng.choice(["excellent", -5, 2**40, 1.5])}).encode()
    elif kind == 7:
        body = json.dumps({"value": 1.0, "pad": "x" * rng.randrange(60_000, 80_000)}).encode()
    elif kind == 8:
        body = json.dumps({"ts": now}).encode()
    elif kind == 9:
        body = b'{"value": 1.0' + rng.randbytes(5)
    elif kind == 10:
        body = json.dumps([{"value": 1.0}] * rng.randrange(1, 50)).encode()
    else:
        body = json.dumps({"value": rng.uniform(-1e6, 1e6), "ts": now}).encode()  # plausible, on a random topic
    return topic, body


def sender(host: str, port: int, seconds: float, rate: float, good_rate: float, topics: list[str], good_topic: str,
           result: mp.Queue) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    rng = random.Random(1)
    sent_good = sent_bad = 0
    start = time.monotonic()
    next_good = next_bad = start
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now >= next_good:
            client.publish(good_topic, json.dumps({"value": float(sent_good), "ts": time.time()}), qos=1)
            sent_good += 1
            next_good += 1.0 / good_rate
        if now >= next_bad:
            topic, body = hostile(rng, topics, time.time())
            try:
                client.publish(topic, body, qos=rng.choice([0, 1]))
            except ValueError:  # paho itself refuses some topics (wildcards); they never reach the broker
                pass
            sent_bad += 1
            next_bad += 1.0 / rate
        time.sleep(max(0.0, min(next_good, next_bad) - time.monotonic()))
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()
    result.put((sent_good, sent_bad))


async def measure(args: argparse.Namespace, host: str, port: int, protocol: str) -> dict:
    line = load_line(SIMULATED_LINE)
    conn = MqttConnection(host=host, port=port, protocol=protocol)
    buffer: Buffer = Buffer(1_000_000, name="fuzz")
    collector = MqttCollector(line, buffer, conn)
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    topics = sorted({s.source.mqtt.topic for a in line.assets for s in a.signals if s.source.mqtt})
    good_topic = line.signal(GOOD_TOPIC_KEY).source.mqtt.topic
    proc = psutil.Process(os.getpid())
    await asyncio.sleep(1.0)
    rss_before = proc.memory_info().rss
    ctx = mp.get_context("spawn")
    result: mp.Queue = ctx.Queue()
    p = ctx.Process(target=sender, args=(host, port, args.seconds, args.rate, args.good_rate, topics,
                                                             good_topic, result))
    p.start()
    good: set[float] = set()
    other = 0
    deadline = time.monotonic() + args.seconds + 30
    sent = None
    while time.monotonic() < deadline:
        try:
            item = await asyncio.wait_for(buffer.get(), 0.5)
        except asyncio.TimeoutError:
            if sent is None and not p.is_alive():
                sent = result.get()
            if sent is not None and len(good) >= sent[0]:
                break
            continue
        if isinstance(item, Reading) and item.key == GOOD_TOPIC_KEY and item.quality.value == "good":
            good.add(item.value)
        elif isinstance(item, Reading):
            other += 1
    if sent is None:
        p.join(30)
        sent = result.get(timeout=10)
    rss_after = proc.memory_info().rss
    stats = collector.stats()
    await collector.stop()
    # a plausible value on a random line topic is a good reading too; the good stream's values are its sequence
    lost = sum(1 for i in range(sent[0]) if float(i) not in good)
    crashes = stats["callback_errors"] + (0 if stats["connected"] else 1) + (stats["outages"])
    return {"sent_good": sent[0], "sent_bad": sent[1], "good_lost": lost, "other_readings": other,
            "rejects": stats["rejects"], "crashes": crashes, "rss_mib": (rss_after - rss_before) / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=500.0, help="random payloads per second")
    ap.add_argument("--good-rate", type=float, default=50.0, help="good readings per second")
    args = ap.parse_args()
    from bench import start_broker

    broker = start_broker()
    try:
        r = asyncio.run(measure(args, broker.host, broker.port, broker.protocol))
    finally:
        broker.stop()
    print(f"broker {broker.kind}; {args.seconds:g} s; {r['sent_bad']:,} random payloads ({args.rate:g}/s) beside "
          f"{r['sent_good']:,} good readings ({args.good_rate:g}/s)")
    print("rejects by reason:")
    for reason, n in sorted(r["rejects"].items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<14} {n:>8,}")
    print(f"plausible random readings let through (odd, not wrong): {r['other_readings']:,}")
    print(f"good readings lost: {r['good_lost']}; crashes (callback errors, lost session): {r['crashes']}")
    print(f"fuzz: {r['sent_bad']} payloads, {r['crashes']} crashes, {r['good_lost']} good readings lost, "
          f"rss +{r['rss_mib']:.1f} MiB")
    return 0 if r["crashes"] == 0 and r["good_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
