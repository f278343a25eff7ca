"""The collect station: OPC UA, Sparkplug B and MQTT sources turned into one stream of typed Readings in a Buffer.

Every collector has ``await run(stop_event)``, ``stats() -> dict`` (for the health
endpoint) and a ``connected`` asyncio.Event.
"""

from __future__ import annotations

from typing import Literal

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.collect.opcua import OpcuaCollector, OpcuaConnectError
from factory_copilot.collect.sparkplug import SparkplugCollector
from factory_copilot.config import LineConfig
from factory_copilot.records import Reading


def collector_for(
    line: LineConfig, buffer: Buffer[Reading], source: Literal["opcua", "mqtt", "sparkplug"], **options
) -> OpcuaCollector | MqttCollector | SparkplugCollector:
    """The collector for ``source``, connected as the line file says; ``options`` go to its constructor."""
    if source == "opcua":
        return OpcuaCollector(line, buffer, **options)
    if source == "mqtt":
        return MqttCollector(line, buffer, **options)
    if source == "sparkplug":
        return SparkplugCollector(line, buffer, **options)
    raise ValueError(f"unknown source {source!r}; use opcua, mqtt or sparkplug")


__all__ = ["MqttCollector", "OpcuaCollector", "OpcuaConnectError", "SparkplugCollector", "collector_for"]
