"""The collect station: OPC UA and MQTT sources turned into one stream of typed Readings in a Buffer."""

from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.collect.opcua import OpcuaCollector, OpcuaConnectError

__all__ = ["MqttCollector", "OpcuaCollector", "OpcuaConnectError"]
