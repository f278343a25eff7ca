"""The publish station's inbound side: operator commands, feedback and questions from MQTT, as records or refusals.

A command (or an operator's feedback on an alarm, or a handover acknowledgement) comes in on ``commands/<user>``
and a question on ``ask/<user>``: the sender is the MQTT user of that level (the broker's ACL lets each user
publish only on its own), never what the payload says. A valid command or feedback goes to the alarm station's
buffer, a valid question to the copilot's; anything else gets an answer at once saying why (and is counted):
a payload over the size limit (refused before it is parsed), an ``actor`` that is not the sender, a response
topic outside the service's own reply prefix, a full engine queue ("busy, retry"). Where the answer goes
is remembered per request: the MQTT 5 response topic the sender named (with its correlation data)
when it lies under the reply prefix, else the reply topic of the scheme.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.publish import payloads
from factory_copilot.publish.payloads import Rejected
from factory_copilot.publish.topics import Topics
from factory_copilot.records import AnswerChunk, CommandResult, HandoverAck, OperatorCommand, OperatorFeedback, Question

log = logging.getLogger(__name__)

Route = tuple[str, bytes | None]  # topic, MQTT 5 correlation data


class Inbound:
    """Parses what arrives on the command and ask topics; ``reply``/``answer`` send the refusals."""

    def __init__(self, topics: Topics, commands: Buffer[OperatorCommand] | None, questions: Buffer[Question] | None,
                 reply: Callable[[CommandResult, Route], None], answer: Callable[[AnswerChunk, Route], None],
                 counts: collections.Counter, max_routes: int = 1000,
                 handover_acks: Buffer[HandoverAck] | None = None,
                 feedback: Buffer[OperatorFeedback] | None = None):
        self.topics = topics
        self.commands = commands
        self.handover_acks = handover_acks  # acknowledgements of shift handovers: same level, same identity
        self.feedback = feedback  # operators' verdicts on alarms: same level, same identity, authorised by the alarms
        self.questions = questions
        self.reply = reply
        self.answer = answer
        self.counts = counts
        self.max_routes = max_routes
        self._routes: collections.OrderedDict[str, Route] = collections.OrderedDict()
        self._log = Throttled(log, 10.0)  # a flood of bad commands is counted, and named once per 10 s

    def message(self, topic: str, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        parts = self.topics.parse(topic)
        if parts is None or parts.user is None:
            return
        if parts.kind == "commands":
            self._command(parts.user, raw, response_topic, correlation)
        elif parts.kind == "ask":
            self._question(parts.user, raw, response_topic, correlation)

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

    def _own(self, response_topic: str | None, prefix: str, sender: str, what: str) -> str | None:
        """Why a response topic is refused: the service answers only under its own reply prefix."""
        if not response_topic:
            return None
        if response_topic.startswith(prefix) and len(response_topic) > len(prefix) and not any(
                c in response_topic for c in "+#\0"):
            return None
        self.counts["foreign_response_topics"] += 1
        self._log.warning("foreign-response-topic", "refused a %s from %s: response topic %s is outside the reply "
                          "prefix %s (%d refused so far)", what, printable(sender), printable(response_topic),
                          prefix, self.counts["foreign_response_topics"])
        return f"response topic {response_topic[:200]!r} is outside {prefix}: refused (nothing was done)"

    def _too_big(self, raw: bytes, sender: str, what: str) -> str | None:
        if len(raw) <= payloads.MAX_INCOMING_BYTES:
            return None
        self.counts["oversized"] += 1
        self._log.warning("oversized", "refused a %d-byte %s from %s: over the %d-byte limit (%d refused so far)",
                          len(raw), what, printable(sender), payloads.MAX_INCOMING_BYTES, self.counts["oversized"])
        return f"payload of {len(raw)} bytes is over the limit of {payloads.MAX_INCOMING_BYTES}"

    def _command(self, sender: str, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        foreign = self._own(response_topic, self.topics.command_replies(), sender, "command")
        big = self._too_big(raw, sender, "command")
        parsed = Rejected(None, big) if big else payloads.parse_command(raw, sender)
        if foreign and not isinstance(parsed, Rejected):
            parsed = Rejected(parsed.request_id, foreign)
        if isinstance(parsed, Rejected):
            what = "feedback" if parsed.schema == payloads.FEEDBACK else "command"
            self.counts["feedback_rejected" if what == "feedback" else "commands_rejected"] += 1
            self._log.warning(f"{what}-rejected", "rejected %s on %s: %s", what,
                              printable(self.topics.commands(sender)), printable(parsed.reason))
            result = CommandResult(parsed.request_id, False, f"rejected: {parsed.reason}")
            topic = self.topics.command_reply(parsed.request_id) if foreign or not response_topic else response_topic
            self.reply(result, (topic, correlation))
            return
        self.counts["commands"] += 1
        route = (response_topic, correlation) if response_topic else (self.topics.command_reply(parsed.request_id), None)
        if isinstance(parsed, HandoverAck):
            if self.handover_acks is None:
                self.reply(CommandResult(parsed.request_id, False, "this service writes no shift handovers (the line "
                                         "file names no shifts); nothing changed"), route)
                return
            self._remember(parsed.request_id, response_topic, correlation)
            self.handover_acks.offer(parsed)
            return
        if isinstance(parsed, OperatorFeedback):
            self._feedback(parsed, sender, route, response_topic, correlation)
            return
        if self.commands is None:
            self.reply(CommandResult(parsed.request_id, False, "no alarm engine is attached to this publisher; "
                                     "nothing changed"), route)
            return
        if self.commands.qsize() >= self.commands.maxsize:
            # the engine is behind: say so rather than let the buffer drop the oldest command unanswered
            self.counts["commands_busy"] += 1
            self._log.warning("busy", "alarm engine busy (%d commands queued): refused %s of %s by %s, asked to "
                              "retry (%d refused busy so far)", self.commands.qsize(), parsed.command,
                              printable(parsed.alarm_id), printable(sender), self.counts["commands_busy"])
            self.reply(CommandResult(parsed.request_id, False, "busy, retry: the alarm engine has "
                                     f"{self.commands.qsize()} commands queued; nothing changed"), route)
            return
        self._remember(parsed.request_id, response_topic, correlation)
        self.commands.offer(parsed)

    def _feedback(self, parsed: OperatorFeedback, sender: str, route: Route, response_topic: str | None,
                  correlation: bytes | None) -> None:
        if self.feedback is None:
            self.reply(CommandResult(parsed.request_id, False, "no alarm engine is attached to this publisher; "
                                     "the feedback was not saved"), route)
            return
        if self.feedback.qsize() >= self.feedback.maxsize:
            self.counts["feedback_busy"] += 1
            self._log.warning("busy-feedback", "alarm engine busy (%d feedback queued): refused feedback on %s by %s, "
                              "asked to retry", self.feedback.qsize(), printable(parsed.alarm_id), printable(sender))
            self.reply(CommandResult(parsed.request_id, False, "busy, retry: the alarm engine has "
                                     f"{self.feedback.qsize()} feedback queued; not saved"), route)
            return
        self.counts["feedback"] += 1
        self._remember(parsed.request_id or "", response_topic, correlation)
        self.feedback.offer(parsed)

    def _question(self, sender: str, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        foreign = self._own(response_topic, self.topics.answers(), sender, "question")
        big = self._too_big(raw, sender, "question")
        parsed = Rejected(None, big) if big else payloads.parse_question(raw, sender)
        if foreign and not isinstance(parsed, Rejected):
            parsed = Rejected(parsed.request_id, foreign)
        if not foreign:
            self._remember(parsed.request_id or "", response_topic, correlation)
        if isinstance(parsed, Rejected):
            self.counts["questions_rejected"] += 1
            self._log.warning("question-rejected", "rejected question on %s: %s", printable(self.topics.ask(sender)),
                              printable(parsed.reason))
            self.answer(AnswerChunk(parsed.request_id or "", None, "", True, error=f"rejected: {parsed.reason}"),
                        self.route(parsed.request_id or "", self.topics.answer(parsed.request_id)))
            return
        if self.questions is None:
            self.answer(AnswerChunk(parsed.request_id, parsed.alarm_id, "", True,
                                    error="no copilot is attached to this publisher"),
                        self.route(parsed.request_id, self.topics.answer(parsed.request_id)))
            return
        if self.questions.qsize() >= self.questions.maxsize:
            self.counts["questions_busy"] += 1
            self._log.warning("busy-ask", "copilot busy (%d questions queued): refused a question from %s, asked to "
                              "retry", self.questions.qsize(), printable(sender))
            self.answer(AnswerChunk(parsed.request_id, parsed.alarm_id, "", True,
                                    error="busy, retry: the copilot has too many questions queued"),
                        self.route(parsed.request_id, self.topics.answer(parsed.request_id)))
            return
        self.counts["questions"] += 1
        self.questions.offer(parsed)
