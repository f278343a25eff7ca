"""Builds the one kind of paho-mqtt client every station uses, from the line's MqttConnection.

Protocol (MQTT 5 or 3.1.1), TLS, username/password and reconnect back-off are
set here and nowhere else, so the collect station, the publish station and the
simulator all behave the same way against the same broker.
"""

from __future__ import annotations

import logging
import ssl
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from factory_copilot.config import MqttConnection

log = logging.getLogger(__name__)

# back-off between reconnect attempts after the broker goes away (seconds)
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 10


def protocol_of(conn: MqttConnection) -> paho.MQTTProtocolVersion:
    return paho.MQTTv5 if conn.protocol == "5" else paho.MQTTv311


def make_client(conn: MqttConnection, client_id: str | None = None, *, role: str = "client") -> paho.Client:
    """A paho client (callback API 2) set up for ``conn``; call ``connect(client, conn)`` then ``loop_start()``.

    ``role`` only makes the generated client id readable in the broker log.
    """
    cid = client_id or conn.client_id or f"factory-copilot-{role}-{uuid.uuid4().hex[:8]}"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol_of(conn))
    if conn.username:
        client.username_pw_set(conn.username, conn.password)
    if conn.tls:
        client.tls_set(
            ca_certs=conn.ca_file,
            certfile=conn.cert_file,
            keyfile=conn.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def connect(client: paho.Client, conn: MqttConnection) -> None:
    """Start connecting without waiting; paho's loop keeps retrying until the broker answers."""
    if conn.protocol == "5":
        client.connect_async(conn.host, conn.port, keepalive=conn.keepalive_s, clean_start=True)
    else:
        client.connect_async(conn.host, conn.port, keepalive=conn.keepalive_s)


def reason_text(reason_code: object) -> str:
    """A readable reason from paho's ReasonCode (MQTT 5) or integer rc (3.1.1)."""
    name = getattr(reason_code, "getName", None)
    return name() if callable(name) else str(reason_code)


def unsupported_protocol(reason_code: object) -> bool:
    """The broker refused our protocol version (MQTT 5 to a 3.1.1-only broker)."""
    return "protocol version" in reason_text(reason_code).lower() or str(reason_code) in ("1", "132")


def downgraded(conn: MqttConnection, reason_code: object) -> MqttConnection | None:
    """The 3.1.1 version of ``conn`` when an MQTT 5 connect was refused for its protocol version, else None.

    amqtt and older gateways speak 3.1.1 only; rather than retry MQTT 5 forever, speak theirs.
    """
    if conn.protocol != "5" or not unsupported_protocol(reason_code):
        return None
    log.warning("MQTT %s:%d does not speak MQTT 5; falling back to 3.1.1", conn.host, conn.port)
    return conn.model_copy(update={"protocol": "3.1.1"})


def is_failure(reason_code: object) -> bool:
    failed = getattr(reason_code, "is_failure", None)
    if isinstance(failed, bool):
        return failed
    try:
        return int(reason_code) != 0  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return True
