"""Every command gets an answer: a flood of operator commands against the secured path, counted by outcome.

A Mosquitto configured the `broker init` way (password file, per-user ACL; TLS unless --no-tls), the alarm
engine with one raised alarm and the line's roles, its station and the publish station as the service
account. One operator sends N commands as fast as paho takes them (acknowledge / unshelve of an alarm
that is neither: each is executed and refused by the engine, the slow path), and the benchmark counts
the replies: answered by the engine, refused "busy, retry", and missing. Then the same flood with 20 MB
of padding in one command, measuring the service's RSS.

    PYTHONPATH=. .venv/bin/python bench/command_flood.py [--commands 5000] [--queue 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: bench

from factory_copilot.alarms import AlarmEngine, AlarmSettings  # noqa: E402
from factory_copilot.alarms.station import AlarmStation  # noqa: E402
from factory_copilot.config import SIMULATED_LINE, MqttConnection, Roles, load_line  # noqa: E402
from factory_copilot.plumbing.broker import MosquittoBroker, free_port  # noqa: E402
from factory_copilot.plumbing.broker_site import Account, write_site  # noqa: E402
from factory_copilot.plumbing.buffer import Buffer  # noqa: E402
from factory_copilot.publish import Publisher  # noqa: E402
from factory_copilot.records import Anomaly  # noqa: E402
from tests.support.big_command import send_big_command  # noqa: E402

PASSWORDS = {"factory-copilot": "service-secret-1", "ann": "ann-secret-12"}
async def run(n: int, queue: int, tls: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="fc-bench-flood-"))
    site = write_site(folder / "mosquitto", [Account("factory-copilot", "service", PASSWORDS["factory-copilot"]),
                                             Account("ann", "person", PASSWORDS["ann"])],
                      bind="127.0.0.1", port=free_port(), tls=tls, hostnames=["127.0.0.1"])
    broker = MosquittoBroker(site=site).start()
    line = load_line(SIMULATED_LINE).model_copy(update={"roles": Roles.model_validate({"operators": ["ann"]})})
    engine = AlarmEngine(line, folder / "alarms.db", AlarmSettings(on_delay_s=0.0, silence_s=3600.0))
    for _ in range(2):
        engine.ingest(Anomaly(ts=time.time(), asset="product_pump", kind="limit", signal="flow", value=20.0, score=3.0,
                              threshold=1.0, mode="running"))
    [alarm] = engine.active()
    commands, results = Buffer(queue, "commands"), Buffer(100_000, "results")
    station = AlarmStation(engine, Buffer(10, "anomalies"), Buffer(100_000, "events"), commands, results)
    conn = MqttConnection(host="127.0.0.1", port=site.port, username="factory-copilot",
                          password=PASSWORDS["factory-copilot"], tls=tls, ca_file=str(site.ca_file) if tls else None)
    pub = Publisher.for_line(line, folder / "outbox.db", connection=conn, commands=commands, results=results)
    await pub.start()
    await asyncio.wait_for(pub.online.wait(), 10)
    halt = asyncio.Event()
    tasks = [asyncio.create_task(pub.run(halt)), asyncio.create_task(station.run(halt))]

    replies: dict[str, dict] = {}
    got_all = threading.Event()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ann-flood", protocol=paho.MQTTv5)
    client.username_pw_set("ann", PASSWORDS["ann"])
    if tls:
        client.tls_set(ca_certs=str(site.ca_file))
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)

    def on_message(c, u, m):
        body = json.loads(m.payload)
        replies[body.get("request_id") or f"unknown-{len(replies)}"] = body
        if len(replies) >= n:
            got_all.set()

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(pub.topics.command_replies() + "#", qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", site.port)
    client.loop_start()
    assert subscribed.wait(10)
    topic = pub.topics.commands("ann")
    started = time.perf_counter()
    for i in range(n):
        body = {"schema": "command/1", "request_id": f"r{i}", "command": "acknowledge" if i % 2 else "unshelve",
                "alarm_id": alarm.alarm_id}
        client.publish(topic, json.dumps(body), qos=1)
    sent_s = time.perf_counter() - started
    await asyncio.to_thread(got_all.wait, 120)
    answered_s = time.perf_counter() - started
    me = psutil.Process()
    rss_before = me.memory_info().rss
    # from another process, so the measurement is the service's memory only
    sent = await asyncio.to_thread(send_big_command, site.port, "ann", PASSWORDS["ann"], topic, alarm.alarm_id,
                                   str(site.ca_file) if tls else None, 60)
    refused_big = sent.stdout.strip() == "disconnected"
    rss_after = me.memory_info().rss
    client.disconnect()
    client.loop_stop()
    halt.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats = pub.stats()
    await pub.stop()
    engine.close()
    broker.stop()
    outcomes = {"engine": 0, "busy": 0, "other": 0}
    for r in replies.values():
        msg = r.get("message", "")
        outcomes["busy" if msg.startswith("busy, retry") else "engine" if r.get("alarm") or "alarm " in msg else "other"] += 1
    return {"commands": n, "queue": queue, "tls": tls, "replies": len(replies), "missing": n - len(replies),
            **outcomes, "sent_s": round(sent_s, 2), "answered_s": round(answered_s, 2),
            "commands_busy_counted": stats.get("commands_busy", 0), "big_refused_by_broker": refused_big,
            "rss_delta_mib_after_20mb": round((rss_after - rss_before) / 2**20, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=5000)
    p.add_argument("--queue", type=int, default=1000, help="the engine's command queue (the service's is 1000)")
    p.add_argument("--no-tls", action="store_true")
    args = p.parse_args()
    result = asyncio.run(run(args.commands, args.queue, not args.no_tls))
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    print(f"SUMMARY command_flood: {result['replies']}/{result['commands']} commands answered "
          f"({result['engine']} by the engine, {result['busy']} busy-retry, {result['missing']} missing) in "
          f"{result['answered_s']} s; 20 MB command refused at the broker: {result['big_refused_by_broker']}, "
          f"service RSS {result['rss_delta_mib_after_20mb']:+} MiB")
    return 0 if result["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
