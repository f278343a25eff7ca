"""Write tools' commands, sent exactly as the dashboard sends them: on the user's own ``commands/<user>`` level.

The MCP server never changes an alarm itself. It publishes a ``command/1`` over its MQTT account; the broker
lets an account send only on its own level (a person) or on the level of whoever logged in to it (kind
``dashboard``, as the MCP server over HTTP is), the service takes the actor from the topic, the alarm engine
checks the line's ``roles:`` and writes the audit trail, and its reply (``command-reply/1``) is the tool's
answer. No reply within ``reply_timeout_s`` says so, with the likely causes.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import uuid
from typing import Any

from factory_copilot.config import MqttConnection
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.publish import payloads
from factory_copilot.publish.topics import Topics
from factory_copilot.errors import Transient

log = logging.getLogger(__name__)


class NoReply(Transient, RuntimeError):
    """The alarm engine did not answer in time (the service is down, or the broker dropped the command)."""


class CommandSender:
    """Publishes commands and waits for their replies; thread-safe ``send``; ``start`` and ``stop`` once."""

    def __init__(self, conn: MqttConnection, topics: Topics, reply_timeout_s: float = 10.0):
        self.conn = conn
        self.topics = topics
        self.reply_timeout_s = reply_timeout_s
        self._waiting: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.session = MqttSession(conn, role="mcp", subscriptions=[(topics.command_replies() + "+", 1)],
                                   on_message=self._on_message, on_subscribed=self._subscribed.set,
                                   on_down=lambda why: self._subscribed.clear())

    def start(self) -> "CommandSender":
        self.session.start()
        return self

    def stop(self) -> None:
        self.session.stop()

    def send(self, user: str, command: str, alarm_id: str, comment: str | None = None,
             shelve_s: float | None = None) -> dict[str, Any]:
        """Send ``command`` as ``user`` and return the engine's reply (``ok``, ``message``, ``alarm``)."""
        if not self._subscribed.wait(self.reply_timeout_s):
            raise NoReply(f"not connected to the broker {self.session.where} as {self.conn.username or 'anonymous'} "
                          f"({self.session.last_refusal or 'no answer'}): nothing was sent")
        request_id = uuid.uuid4().hex
        body = payloads.command(command, alarm_id, request_id, comment=comment, shelve_s=shelve_s)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._waiting[request_id] = future
        try:
            self.session.publish(self.topics.commands(user), json.dumps(body), qos=1)
            return future.result(self.reply_timeout_s)
        except concurrent.futures.TimeoutError:
            raise NoReply(f"no reply from the alarm engine within {self.reply_timeout_s:g} s: is the service running, "
                          f"and may MQTT account {self.conn.username!r} send on commands/{user} (a person's own "
                          "level, or any level for an account of kind dashboard)? The command may not have "
                          "been executed") from None
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)

    def _on_message(self, msg) -> None:  # paho's thread
        parts = self.topics.parse(msg.topic)
        if parts is None or parts.kind != "command_reply" or parts.request_id is None:
            return
        with self._lock:
            future = self._waiting.get(parts.request_id)
        if future is None or future.done():
            return
        try:
            future.set_result(json.loads(msg.payload))
        except ValueError as exc:
            future.set_exception(NoReply(f"the reply to {parts.request_id} was not JSON: {exc}"))
