"""How long an alarm takes from the publish station to a QoS 1 subscriber, alone and under a flood of diagnosis text.

Against a real broker on loopback (Mosquitto when installed, else amqtt):
  * quiet: alarm events one after another, each measured from ``alarm_event()``
    (outbox write included) to its arrival at a subscriber;
  * flooded: the same while the copilot streams diagnosis tokens as fast as it can;
    alarms must keep their latency (they go before diagnosis traffic);
  * backlog: alarms stored while the broker is away, then drained when it is back.
    PYTHONPATH=. .venv/bin/python bench/publish_latency.py [--alarms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: bench

from factory_copilot.config import MqttConnection  # noqa: E402
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Priority  # noqa: E402
from factory_copilot.publish import Publisher, Topics  # noqa: E402
from bench import start_broker  # noqa: E402

SITE, LINE = "bench", "line-1"


def alarm_event(i: int) -> AlarmEvent:
    now = time.time()
    alarm = Alarm(f"a{i}", "product_pump", "flow:limit", AlarmState.ACTIVE_UNACK, Priority.HIGH, f"alarm {i}", now, now)
    return AlarmEvent(alarm.alarm_id, now, "raised", alarm.state, alarm)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(pub: Publisher, arrivals: dict[str, float], n: int, offset: int, flood: bool) -> list[float]:
    sent: dict[str, float] = {}
    flooding = True

    async def stream() -> None:
        k = 0
        while flooding:
            for _ in range(50):
                pub.diagnosis_token("a0", f"token{k} ")
                k += 1
            await asyncio.sleep(0)

    flooder = asyncio.create_task(stream()) if flood else None
    for i in range(offset, offset + n):
        aid = f"a{i}"
        sent[aid] = time.perf_counter()
        pub.alarm_event(alarm_event(i))
        deadline = time.monotonic() + 10
        while aid not in arrivals and time.monotonic() < deadline:
            await asyncio.sleep(0.0005)
    flooding = False
    if flooder:
        await flooder
    return [(arrivals[a] - sent[a]) * 1000 for a in sent if a in arrivals]


async def main(n: int) -> None:
    broker = start_broker()
    topics = Topics(SITE, LINE)
    arrivals: dict[str, float] = {}
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=paho.MQTTv5 if broker.protocol == "5" else paho.MQTTv311)

    def on_message(client, userdata, msg):  # noqa: ANN001
        if msg.topic == topics.events():
            arrivals[msg.payload.split(b'"alarm_id":"', 1)[1].split(b'"', 1)[0].decode()] = time.perf_counter()

    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe(topics.events(), 1)
    sub.loop_start()
    with tempfile.TemporaryDirectory() as tmp:
        conn = MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)
        pub = Publisher(SITE, LINE, Path(tmp) / "outbox.db", connection=conn, stream_max=5000)
        await pub.start()
        await asyncio.wait_for(pub.online.wait(), 10)
        quiet = await measure(pub, arrivals, n, 0, flood=False)
        flooded = await measure(pub, arrivals, n, n, flood=True)
        streamed = pub.counts["handed"] - 2 * 2 * n

        broker.stop()
        await asyncio.wait_for(pub.offline.wait(), 10)
        backlog = 10 * n
        t0 = time.perf_counter()
        for i in range(2 * n, 2 * n + backlog):
            pub.alarm_event(alarm_event(i))
        store_s = time.perf_counter() - t0
        broker.start()
        t_up = time.perf_counter()
        await asyncio.wait_for(pub.online.wait(), 30)
        t1 = time.perf_counter()
        await pub.wait_idle(120)
        drain_s = time.perf_counter() - t1
        await pub.stop()
    sub.loop_stop()
    broker.stop()

    for name, lat in (("quiet", quiet), ("flooded", flooded)):
        print(
            f"{name:8s} alarms={len(lat):4d}  latency ms p50={statistics.median(lat):.2f} p99={percentile(lat, 0.99):.2f} "
            f"max={max(lat):.2f}"
        )
    print(f"flood: {streamed} diagnosis chunks handed to the broker alongside the alarms")
    print(f"backlog: {backlog} alarm events ({2 * backlog} messages) stored in {store_s:.2f} s "
          f"({2 * backlog / store_s:.0f} msg/s), back online {t1 - t_up:.2f} s after the broker, drained in {drain_s:.2f} s ({2 * backlog / drain_s:.0f} msg/s, acknowledged by the broker)")
    print(f"alarm latency under diagnosis flood: p99 {percentile(flooded, 0.99):.2f} ms (quiet p99 {percentile(quiet, 0.99):.2f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=300)
    asyncio.run(main(parser.parse_args().alarms))
