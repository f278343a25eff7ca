"""Real MQTT brokers for tests: Mosquitto when installed, else the embedded amqtt broker.

Each binds 127.0.0.1 on a free port and can be stopped and started again on the
same port, so tests can restart the broker in the middle of a stream.
"""

from __future__ import annotations

import time

from factory_copilot.plumbing import broker
from factory_copilot.plumbing.broker import MOSQUITTO, EmbeddedBroker, broker_reachable, free_port


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


class MosquittoBroker(broker.MosquittoBroker):
    """The project's own Mosquitto runner (the demo's), with settings for tests, restartable on the same port."""

    def __init__(self, port: int | None = None):
        # the default max_queued_messages (1000) silently drops QoS 1 messages to a slow subscriber
        super().__init__("127.0.0.1", port or free_port(), persistence=False, max_queued=1_000_000,
                         settings="max_inflight_messages 0\n")
        self._dir = self.dir  # where tests put extra files (password file, certificates)

    def restart(self) -> None:
        self.stop()
        self.start()


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
