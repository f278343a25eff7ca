"""The publish station's inbound side: operator commands and questions from MQTT, as records or refusals.

A valid command goes to the alarm station's buffer, a valid question to the copilot's;
anything else gets an answer at once saying why (and is counted). Where the answer goes is
remembered per request: the MQTT 5 response topic the sender named (with its correlation
data), else the reply topic of the scheme.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import printable
from factory_copilot.publish import payloads
from factory_copilot.publish.payloads import Rejected
from factory_copilot.publish.topics import Topics
from factory_copilot.records import AnswerChunk, CommandResult, OperatorCommand, Question

log = logging.getLogger(__name__)

Route = tuple[str, bytes | None]  # topic, MQTT 5 correlation data


class Inbound:
    """Parses what arrives on the command and ask topics; ``reply``/``answer`` send the refusals."""

    def __init__(self, topics: Topics, commands: Buffer[OperatorCommand] | None, questions: Buffer[Question] | None,
                 reply: Callable[[CommandResult, Route], None], answer: Callable[[AnswerChunk, Route], None],
                 counts: collections.Counter, max_routes: int = 1000):
        self.topics = topics
        self.commands = commands
        self.questions = questions
        self.reply = reply
        self.answer = answer
        self.counts = counts
        self.max_routes = max_routes
        self._routes: collections.OrderedDict[str, Route] = collections.OrderedDict()

    def message(self, topic: str, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        parts = self.topics.parse(topic)
        kind = parts.kind if parts else None
        if kind == "commands":
            self._command(raw, response_topic, correlation)
        elif kind == "ask":
            self._question(raw, response_topic, correlation)

    def route(self, request_id: str | None, default: str, forget: bool = True) -> Route:
        """Where the reply to ``request_id`` goes: the MQTT 5 response topic it named, else ``default``."""
        if request_id is not None and request_id in self._routes:
            return self._routes.pop(request_id) if forget else self._routes[request_id]
        return default, None

    def _remember(self, request_id: str, response_topic: str | None, correlation: bytes | None) -> None:
        if response_topic:
            self._routes[request_id] = (response_topic, correlation)
            while len(self._routes) > self.max_routes:
                self._routes.popitem(last=False)

    def _command(self, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        parsed = payloads.parse_command(raw)
        if isinstance(parsed, Rejected):
            self.counts["commands_rejected"] += 1
            log.warning("rejected command on %s: %s", self.topics.commands(), printable(parsed.reason))
            result = CommandResult(parsed.request_id, False, f"rejected: {parsed.reason}")
            self.reply(result, (response_topic or self.topics.command_reply(parsed.request_id), correlation))
            return
        self.counts["commands"] += 1
        self._remember(parsed.request_id, response_topic, correlation)
        if self.commands is None:
            self.reply(CommandResult(parsed.request_id, False, "no alarm engine is attached to this publisher; "
                                     "nothing changed"), self.route(parsed.request_id, self.topics.command_reply(parsed.request_id)))
            return
        self.commands.offer(parsed)

    def _question(self, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        parsed = payloads.parse_question(raw)
        self._remember(parsed.request_id or "", response_topic, correlation)
        if isinstance(parsed, Rejected):
            self.counts["questions_rejected"] += 1
            log.warning("rejected question on %s: %s", self.topics.ask(), printable(parsed.reason))
            self.answer(AnswerChunk(parsed.request_id or "", None, "", True, error=f"rejected: {parsed.reason}"),
                        self.route(parsed.request_id or "", self.topics.answer(parsed.request_id)))
            return
        if self.questions is None:
            self.answer(AnswerChunk(parsed.request_id, parsed.alarm_id, "", True,
                                    error="no copilot is attached to this publisher"),
                        self.route(parsed.request_id, self.topics.answer(parsed.request_id)))
            return
        self.counts["questions"] += 1
        self.questions.offer(parsed)
