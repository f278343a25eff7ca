"""The collect station: every source the line reads from, as one stream of Readings and SourceStates.

The line file says which kinds of source serve which signals (``LineConfig.sources``:
OPC UA, Sparkplug B, MQTT, or several at once, each signal from the first kind it names); the station
runs one collector per kind into its output buffer, and ``stats()`` reports each one. With
``service.plc_alarms`` the OPC UA collector also reads the PLC's own alarms into ``plc`` (even when no
signal is read over OPC UA).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.collect.opcua import OpcuaCollector
from factory_copilot.collect.replay import ReplayClock, ReplayCollector
from factory_copilot.collect.sparkplug import SparkplugCollector
from factory_copilot.config import LineConfig
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import PlcAcknowledge, PlcCondition, Reading, SourceState

log = logging.getLogger(__name__)

Collector = OpcuaCollector | MqttCollector | SparkplugCollector | ReplayCollector


def collectors_for(line: LineConfig, readings: Buffer[Reading | SourceState], *, pki_dir: Path | None = None,
                   clock: Callable[[], float] = time.time,
                   plc: Buffer[PlcCondition] | None = None,
                   plc_acks: Buffer[PlcAcknowledge] | None = None) -> dict[str, Collector]:
    """One collector per kind of source the line file uses, each serving its own signals."""
    out: dict[str, Collector] = {}
    sources = line.sources()
    plc = plc if line.service.plc_alarms is not None else None
    if plc is not None and "opcua" not in sources:
        sources["opcua"] = []  # the PLC's alarms alone
    for kind, keys in sources.items():
        if kind == "opcua":
            if line.opcua is None:
                raise ValueError(f"line {line.site}/{line.line}: service.source names opcua but the line file has "
                                 "no opcua connection")
            out[kind] = OpcuaCollector(line, readings, signals=keys, pki_dir=pki_dir, clock=clock, plc=plc,
                                       plc_acks=plc_acks)
        elif kind == "mqtt":
            out[kind] = MqttCollector(line, readings, signals=keys, clock=clock)
        elif kind == "sparkplug":
            out[kind] = SparkplugCollector(line, readings, signals=keys, clock=clock)
    return out


class AllConnected:
    """Every collector's ``connected`` event at once, as one event-like object."""

    def __init__(self, events: list[asyncio.Event]):
        self.events = events

    def is_set(self) -> bool:
        return bool(self.events) and all(e.is_set() for e in self.events)

    async def wait(self) -> bool:
        for e in self.events:
            await e.wait()
        return True


class CollectStation:
    """Runs every collector of the line into ``readings``; one dying does not take the others along."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (PlcAcknowledge,)
    gives = (Reading, SourceState, PlcCondition)

    def __init__(self, line: LineConfig, readings: Buffer[Reading | SourceState], *, pki_dir: Path | None = None,
                 clock: Callable[[], float] = time.time, collectors: dict[str, Collector] | None = None,
                 plc: Buffer[PlcCondition] | None = None, plc_acks: Buffer[PlcAcknowledge] | None = None):
        self.line = line
        self.readings = readings
        self.collectors = collectors if collectors is not None else collectors_for(line, readings, pki_dir=pki_dir,
                                                                                   clock=clock, plc=plc, plc_acks=plc_acks)

    @classmethod
    def replaying(cls, line: LineConfig, readings: Buffer[Reading | SourceState], path: Path,
                  clock: "ReplayClock", labels: str | None = None) -> "CollectStation":
        """The station reading a recording instead of the line's sources (``run --replay``)."""
        return cls(line, readings, collectors={"replay": ReplayCollector(line, readings, path, clock, labels)})

    @property
    def finished(self) -> asyncio.Event | None:
        """Set when a replayed recording has been played to its end (None when live)."""
        replay = self.collectors.get("replay")
        return getattr(replay, "finished", None)

    @property
    def kinds(self) -> list[str]:
        return list(self.collectors)

    @property
    def connected(self) -> "AllConnected":
        """Set when every collector is connected (``await station.connected.wait()``)."""
        return AllConnected([c.connected for c in self.collectors.values()])

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for kind, collector in self.collectors.items():
                tg.create_task(collector.run(stop), name=f"collect-{kind}")

    def stats(self) -> dict:
        per = {kind: c.stats() for kind, c in self.collectors.items()}
        return {
            "connected": all(s["connected"] for s in per.values()) if per else False,
            "readings_in": sum(s["readings_in"] for s in per.values()),
            "rejected": sum(s.get("rejected", 0) for s in per.values()),
            "sources": per,
        }
