"""Real MQTT brokers for tests: Mosquitto when installed, else the embedded amqtt broker.

Each binds 127.0.0.1 on a free port and can be stopped and started again on the
same port, so tests can restart the broker in the middle of a stream.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from factory_copilot.plumbing.broker import EmbeddedBroker, broker_reachable, free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class TestBroker:
    """A broker on 127.0.0.1:port that a test can stop() and start() again."""

    kind = "none"

    def __init__(self, port: int | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()

    def wait_up(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not broker_reachable(self.host, self.port, 0.2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} broker did not come up on port {self.port}")
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()


class MosquittoBroker(TestBroker):
    kind = "mosquitto"
    protocol = "5"

    def __init__(self, port: int | None = None):
        super().__init__(port)
        self._dir = Path(tempfile.mkdtemp(prefix="fc-mosquitto-"))
        self.conf = self._dir / "mosquitto.conf"
        # the default max_queued_messages (1000) silently drops QoS 1 messages to a slow subscriber
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MosquittoBroker":
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=open(self._dir / "log", "ab")
        )
        self.wait_up()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 5
        while broker_reachable(self.host, self.port, 0.1) and time.monotonic() < deadline:
            time.sleep(0.02)


class AmqttBroker(TestBroker):
    kind = "amqtt"
    protocol = "3.1.1"

    def __init__(self, port: int | None = None):
        super().__init__(port)
        self._broker: EmbeddedBroker | None = None

    def start(self) -> "AmqttBroker":
        self._broker = EmbeddedBroker(self.host, self.port).start()
        self.wait_up()
        return self

    def stop(self) -> None:
        if self._broker:
            self._broker.stop()
            self._broker = None


def start_broker() -> TestBroker:
    return (MosquittoBroker() if MOSQUITTO else AmqttBroker()).start()
