"""An MQTT broker for users without one: an embedded amqtt broker on loopback.

A real deployment points to Mosquitto, EMQX or HiveMQ; the demo calls
``ensure_broker`` which starts the embedded one only when nothing answers at the
configured address. amqtt speaks MQTT 3.1.1 only, so clients fall back to 3.1.1
against it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

log = logging.getLogger(__name__)


def broker_reachable(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """amqtt's broker on its own thread and event loop, bound to loopback only."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883):
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None

    def start(self, timeout_s: float = 10.0) -> "EmbeddedBroker":
        from amqtt.broker import Broker

        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
            try:
                self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise RuntimeError(f"embedded MQTT broker did not start on {self.host}:{self.port} in {timeout_s} s")
        if errors:
            raise RuntimeError(f"embedded MQTT broker could not start on {self.host}:{self.port}: {errors[0]}")
        log.info("started embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        if not self._loop or not self._broker:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(10)
            self._broker = None


def ensure_broker(host: str, port: int) -> EmbeddedBroker | None:
    """Start an embedded broker when nothing answers at host:port; None when one is already there."""
    if broker_reachable(host, port):
        log.info("using the MQTT broker at %s:%d", host, port)
        return None
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(f"no MQTT broker answers at {host}:{port}, and an embedded one only runs on loopback")
    log.info("no MQTT broker at %s:%d: starting an embedded one", host, port)
    return EmbeddedBroker("127.0.0.1", port).start()
