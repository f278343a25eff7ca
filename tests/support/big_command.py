"""A 20 MB operator command sent from another process, so a measurement of the service's memory sees only the
service; used by tests/test_auth.py and bench/command_flood.py."""

from __future__ import annotations

import subprocess
import sys

SENDER = """
import json, threading
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
done = threading.Event()
c = paho.Client(CallbackAPIVersion.VERSION2, client_id="ann-big", protocol=paho.MQTTv5)
if {user!r}:
    c.username_pw_set({user!r}, {password!r})
if {ca!r}:
    c.tls_set(ca_certs={ca!r})
c.on_connect = lambda *a: c.publish({topic!r}, json.dumps({{"schema": "command/1", "request_id": "huge",
    "command": "unshelve", "alarm_id": {alarm_id!r}, "comment": "x" * (20 * 1024 * 1024)}}), qos=1)
c.on_publish = lambda *a: (print("acknowledged"), done.set())
c.on_disconnect = lambda *a: (print("disconnected"), done.set())
c.connect("127.0.0.1", {port})
c.loop_start()
done.wait({wait_s})
"""


def send_big_command(port: int, user: str | None, password: str | None, topic: str, alarm_id: str,
                     ca: str | None, wait_s: float) -> subprocess.CompletedProcess:
    """``user`` None: no login; ``ca`` None: no TLS. Blocks until the broker acknowledged the command ("acknowledged") or closed the connection ("disconnected"),
    as printed on the result's stdout."""
    script = SENDER.format(port=port, user=user, password=password, topic=topic, alarm_id=alarm_id, ca=ca,
                           wait_s=wait_s)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=wait_s + 30)
