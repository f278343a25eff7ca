"""An MQTT broker for the demo and the simulator: a Mosquitto process of our own, amqtt as the last resort.

A real deployment points to Mosquitto, EMQX or HiveMQ. The demo starts its own Mosquitto
(``start_broker``): a generated configuration, 127.0.0.1 only, persistence in the demo's state
folder, stopped when the demo ends. Only on a machine without Mosquitto does it fall back to
the embedded amqtt broker, with a warning: amqtt speaks MQTT 3.1.1 only, so MQTT 5 clients
(the Node-RED flow, ``alerts tail`` by default) cannot connect to it; our own clients fall back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from factory_copilot.plumbing.broker_site import SiteFiles

log = logging.getLogger(__name__)

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


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


class MosquittoBroker:
    """A Mosquitto process on ``host:port`` with a configuration we write; ``stop()`` ends it (and only it)."""

    kind = "mosquitto"
    protocol = "5"

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, state_dir: str | Path | None = None, *,
                 persistence: bool = True, max_queued: int = 100_000, settings: str = "",
                 site: SiteFiles | None = None):
        if MOSQUITTO is None:
            raise RuntimeError("Mosquitto is not installed (apt-get install mosquitto)")
        self.host, self.port = host, port
        self.proc: subprocess.Popen | None = None
        self.site = site
        if site is not None:  # a configuration broker init wrote: users, ACL, maybe TLS
            self.host, self.port, self.dir, self.conf, self.log_file = site.host, site.port, site.folder, site.conf, site.log_file
            if self.host in ("0.0.0.0", "::"):
                self.host = "127.0.0.1"  # where to look for it coming up
            return
        self.dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="fc-mosquitto-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log_file = self.dir / "mosquitto.log"
        self.conf.write_text(
            f"# written by factory-copilot for this run; edits are overwritten\n"
            f"listener {port} {host}\n"
            "allow_anonymous true\n"
            + (f"persistence true\npersistence_location {self.dir}/\n" if persistence else "persistence false\n")
            # the default (1000) silently drops QoS 1 messages queued for a slow or offline persistent subscriber
            + f"max_queued_messages {max_queued}\n"
            + f"log_dest file {self.log_file}\nlog_type error\nlog_type warning\nlog_type notice\n"
            # started as root, Mosquitto would switch to its own user, who may not write our folder
            + (f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" if os.geteuid() == 0 else "")
            + settings
        )

    def start(self, timeout_s: float = 10.0) -> "MosquittoBroker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not broker_reachable(self.host, self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:] if self.log_file.exists() else []
                raise RuntimeError(f"Mosquitto did not start on {self.host}:{self.port}"
                                   + (f": {' / '.join(tail)}" if tail else "") + f" (configuration {self.conf})")
            time.sleep(0.02)
        log.info("started Mosquitto (MQTT 5 and 3.1.1) on %s:%d, configuration and log in %s", self.host, self.port,
                 self.dir)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # Mosquitto writes its persistence file on SIGTERM
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 5
        while broker_reachable(self.host, self.port, 0.1) and time.monotonic() < deadline:
            time.sleep(0.02)


class EmbeddedBroker:
    """amqtt's broker on its own thread and event loop, bound to loopback only."""

    kind = "amqtt"
    protocol = "3.1.1"

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


Broker = MosquittoBroker | EmbeddedBroker


def start_broker(port: int, state_dir: str | Path | None = None, host: str = "127.0.0.1",
                 persistence: bool = True) -> Broker:
    """A broker of our own on ``host:port``: Mosquitto when installed, else amqtt with a warning."""
    if MOSQUITTO is not None:
        return MosquittoBroker(host, port, state_dir, persistence=persistence).start()
    log.warning("Mosquitto is not installed: starting the embedded amqtt broker instead. It speaks MQTT 3.1.1 only, "
                "so MQTT 5 clients (the Node-RED flow in seeds/, 'alerts tail' without --protocol 3.1.1) cannot "
                "connect to it; install Mosquitto (apt-get install mosquitto) for the full demo")
    return EmbeddedBroker(host, port).start()


def ensure_broker(host: str, port: int, state_dir: str | Path | None = None) -> Broker | None:
    """Start a broker of our own when nothing answers at host:port; None when one is already there."""
    if broker_reachable(host, port):
        log.info("using the MQTT broker at %s:%d", host, port)
        return None
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(f"no MQTT broker answers at {host}:{port}, and this one only starts a broker on loopback")
    log.info("no MQTT broker at %s:%d: starting one", host, port)
    return start_broker(port, state_dir, persistence=state_dir is not None)
