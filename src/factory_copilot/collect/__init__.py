"""The collect station: OPC UA and MQTT sources turned into one stream of typed Readings in a Buffer.

Every collector has ``await run(stop_event)``, ``stats() -> dict`` (for the health
endpoint) and a ``connected`` asyncio.Event.
"""

from __future__ import annotations

from typing import Literal

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.collect.opcua import OpcuaCollector, OpcuaConnectError
from factory_copilot.config import LineConfig
from factory_copilot.records import Reading


def collector_for(
    line: LineConfig, buffer: Buffer[Reading], source: Literal["opcua", "mqtt"], **options
) -> OpcuaCollector | MqttCollector:
    """The collector for ``source``, connected as the line file says; ``options`` go to its constructor."""
    if source == "opcua":
        return OpcuaCollector(line, buffer, **options)
    if source == "mqtt":
        return MqttCollector(line, buffer, **options)
    raise ValueError(f"unknown source {source!r}; use opcua or mqtt")


__all__ = ["MqttCollector", "OpcuaCollector", "OpcuaConnectError", "collector_for"]
