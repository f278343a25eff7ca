"""MQTT username/password and TLS from the line's MqttConnection, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import time
import datetime as dt
import getpass
import ipaddress
import json
import logging
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line
from factory_copilot.records import Reading
from simulators.mqtt_publisher import ReadingPublisher
from tests.support.brokers import MOSQUITTO, MosquittoBroker
from tests.support.opcua import drain

pytestmark = pytest.mark.skipif(not MOSQUITTO, reason="needs Mosquitto")
LINE = load_line(SIMULATED_LINE)
# samples from an hour ago: plausible to the gate (older than max_age_s is rejected as clock_skew)
T0 = float(int(time.time()) - 3600)
ISO_T1 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 60))


class SecureMosquitto(MosquittoBroker):
    """Mosquitto with a password file and, optionally, a TLS listener."""

    def __init__(self, users: dict[str, str], tls: tuple[str, str, str] | None = None):
        super().__init__()
        pw = self._dir / "passwd"
        pw.write_text("")
        for name, password in users.items():
            subprocess.run(["mosquitto_passwd", "-b", str(pw), name, password], check=True, capture_output=True)
        tls_lines = f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\n" if tls else ""
        self.conf.write_text(
            # started as root, Mosquitto drops to its own user, who cannot read our private temp files
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n{tls_lines}"
            f"allow_anonymous false\npassword_file {pw}\npersistence false\n"
            "max_queued_messages 1000000\nlog_dest stderr\nlog_type error\n"
        )


def make_ca_and_server(tmp) -> tuple[str, str, str]:
    def key():
        return ec.generate_private_key(ec.SECP256R1())

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = key()
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tuple(str(p) for p in paths)


async def _roundtrip(conn: MqttConnection) -> Reading:
    buffer: Buffer[Reading] = Buffer(100)
    collector = MqttCollector(LINE, buffer, conn)
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    publisher = await ReadingPublisher(LINE, conn).start(wait_s=10)
    publisher.publish([Reading(T0, "filler", "tank_level", 61.0)])
    got = await drain(buffer, lambda rs: len(rs) >= 1)
    await publisher.stop()
    await collector.stop()
    return got[0]


async def test_username_and_password(caplog):
    broker = SecureMosquitto({"line1": "pa55"}).start()
    try:
        conn = MqttConnection(host=broker.host, port=broker.port, username="line1", password="pa55")
        assert (await _roundtrip(conn)).value == 61.0
        caplog.set_level(logging.WARNING, logger="factory_copilot.collect.mqtt")
        wrong = MqttCollector(LINE, Buffer(10), conn.model_copy(update={"password": "nope"}))
        await wrong.start()
        for _ in range(200):
            if wrong.stats()["outages"]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)  # paho retries; the refusal must still be said once
        await wrong.stop()
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1 and "Not authorized" in refusals[0], refusals
        assert not wrong.stats()["connected"]
    finally:
        broker.stop()


async def test_tls_with_the_configured_ca(tmp_path):
    ca, cert, key = make_ca_and_server(tmp_path)
    broker = SecureMosquitto({"line1": "pa55"}, tls=(ca, cert, key)).start()
    try:
        conn = MqttConnection(host=broker.host, port=broker.port, username="line1", password="pa55", tls=True, ca_file=ca)
        reading = await _roundtrip(conn)
        assert (reading.key, reading.value) == ("filler.tank_level", 61.0)
    finally:
        broker.stop()


def test_payload_format_is_the_documented_one():
    from simulators.mqtt_publisher import payload_of

    body = json.loads(payload_of(Reading(1.5, "a", "b", float("nan"), unit="bar")))
    assert body == {"ts": 1.5, "value": None, "quality": "good", "unit": "bar"}



def test_a_subscription_the_broker_refuses_is_reported(caplog):
    # Mosquitto 2.0 grants every subscription and filters at delivery, so the SUBACK is made by hand here
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from factory_copilot.plumbing.mqtt import MqttSession

    caplog.set_level(logging.ERROR, logger="factory_copilot.plumbing.mqtt")
    collector = MqttCollector(LINE, Buffer(10), MqttConnection())
    # the collector's session checks the SUBACK against the subscriptions it made
    session = MqttSession(MqttConnection(), role="collector", subscriptions=[(t, 1) for t in collector.subscriptions])
    granted, denied = ReasonCode(PacketTypes.SUBACK, "Granted QoS 1"), ReasonCode(PacketTypes.SUBACK, "Not authorized")
    codes = [denied if "/filler/" in t else granted for t in collector.subscriptions]
    session._on_subscribe(None, None, 1, codes, None)
    refused = [r.getMessage() for r in caplog.records]
    n_filler = sum("/filler/" in t for t in collector.subscriptions)
    assert len(refused) == 1 and f"refused the subscription to {n_filler} topic(s)" in refused[0]
    assert "filler" in refused[0] and "product_pump" not in refused[0]
    session._on_subscribe(None, None, 2, [granted] * len(codes), None)
    assert len(caplog.records) == 1
