"""The MQTT topic scheme, in one place: every topic the publisher, the dashboard and ``alerts tail`` use is built and parsed here.

Under ``<prefix>/<site>/<line>/`` (prefix default ``factory-copilot``):

    <asset>/alarms/<alarm-id>             current alarm state, retained; empty retained payload once normal and acknowledged
    <asset>/diagnosis/<alarm-id>          the copilot's diagnosis, retained while the alarm lives
    <asset>/diagnosis/<alarm-id>/stream   streamed diagnosis text chunks, not retained
    <asset>/diagnosis/<alarm-id>/job      where the model's diagnosis of the alarm stands (queued, running, ...)
    events                                every alarm transition, not retained
    status                                birth (online) and last will (offline), retained
    handover                              the newest shift handover, retained (updated when acknowledged)

and, beside the site's lines, ``<prefix>/<site>/bridge/<name>``: an edge broker's bridge to the site broker,
retained ``1`` while it is up and ``0`` while it is down (written by Mosquitto, read by the service's /health);
``<prefix>/<site>/explain/jobs``: the lines' model calls to the site's pool of explainers (copilot/pool.py).
    commands/<user>                       operator commands in, from MQTT user <user> (the broker's ACL lets
                                          each user publish only on its own level: the actor is the topic's)
    commands/reply/<request-id>           the reply to one command (the service's only reply prefix)
    ask/<user>                            questions to the copilot, from MQTT user <user>
    ask/reply/<request-id>                the streamed answer to one question (and where its model job stands)
    explain/reply/<client>                the explainers' replies to one copilot's jobs (correlation data: the job key)

Topic levels cannot hold ``/``, ``+``, ``#`` or NUL, so those characters (and ``%``)
are percent-encoded in ids and decoded again by ``parse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from factory_copilot.names import DEFAULT_PREFIX

# a request whose id could not be read still gets an error reply, on this level
UNKNOWN_REQUEST = "unknown"
REPLY = "reply"  # commands/reply/... and ask/reply/...: never a user's level

_SAFE = "-_.:~@!$&'()*,;=[]{}<>|^ "  # kept as is; '/', '+', '#', '%' and NUL are escaped


def encode_level(value: str) -> str:
    """One topic level from an id (asset, alarm id, request id), escaping what MQTT reserves."""
    if not value:
        raise ValueError("an empty id cannot be a topic level")
    return quote(value, safe=_SAFE)


def decode_level(level: str) -> str:
    return unquote(level)


@dataclass(frozen=True, slots=True)
class TopicParts:
    """What a topic says: ``kind`` is alarm, diagnosis, stream, diagnosis_job, events, status, handover, commands,
    command_reply, ask or answer."""

    kind: str
    site: str
    line: str
    asset: str | None = None
    alarm_id: str | None = None
    request_id: str | None = None
    user: str | None = None  # the sender of a command or question: its topic level


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one line (site and line may be ``+`` to build subscription filters over many lines)."""

    site: str
    line: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/") or any(
            c in self.prefix for c in "+#\0"
        ):
            raise ValueError(f"topic prefix {self.prefix!r}: must be non-empty, without '+', '#' or leading/trailing '/'")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self._level(self.site)}/{self._level(self.line)}"

    @staticmethod
    def _level(value: str) -> str:
        return value if value == "+" else encode_level(value)

    def alarm(self, asset: str, alarm_id: str) -> str:
        return f"{self.base}/{self._level(asset)}/alarms/{self._level(alarm_id)}"

    def diagnosis(self, asset: str, alarm_id: str) -> str:
        return f"{self.base}/{self._level(asset)}/diagnosis/{self._level(alarm_id)}"

    def diagnosis_stream(self, asset: str, alarm_id: str) -> str:
        return self.diagnosis(asset, alarm_id) + "/stream"

    def diagnosis_job(self, asset: str, alarm_id: str) -> str:
        return self.diagnosis(asset, alarm_id) + "/job"

    def events(self) -> str:
        return f"{self.base}/events"

    def status(self) -> str:
        return f"{self.base}/status"

    def handover(self) -> str:
        return f"{self.base}/handover"

    def commands(self, user: str) -> str:
        """Where MQTT user ``user`` sends its commands (and only it may: the broker's ACL)."""
        return f"{self.base}/commands/{self._level(user)}"

    def command_reply(self, request_id: str | None) -> str:
        return f"{self.command_replies()}{encode_level(request_id or UNKNOWN_REQUEST)}"

    def command_replies(self) -> str:
        """The prefix every command reply goes under; a response topic outside it is refused."""
        return f"{self.base}/commands/reply/"

    def ask(self, user: str) -> str:
        return f"{self.base}/ask/{self._level(user)}"

    def answer(self, request_id: str | None) -> str:
        return f"{self.answers()}{encode_level(request_id or UNKNOWN_REQUEST)}"

    def answers(self) -> str:
        return f"{self.base}/ask/reply/"

    def site_links(self) -> str:
        """The edge broker's bridges to the site broker (``broker init --bridge-to``), retained ``1`` up, ``0`` down;
        a level beside the site's lines, so no line's topics (plumbing/broker_site.py writes it)."""
        return f"{self.prefix}/{self._level(self.site)}/bridge/+"

    def site_link_name(self, topic: str) -> str | None:
        """The bridge a ``site_links`` topic names; None for any other topic."""
        head = self.site_links()[:-1]
        rest = topic[len(head):] if topic.startswith(head) else ""
        return rest if rest and "/" not in rest else None

    def explain_jobs(self) -> str:
        """The site's explain jobs (copilot/pool.py), to its pool of explainers: a level beside the site's lines."""
        return f"{self.prefix}/{self._level(self.site)}/explain/jobs"

    def explain_replies(self) -> str:
        """The prefix every explainer's reply goes under: one level per line's client (``explain_reply``)."""
        return f"{self.base}/explain/reply/"

    def explain_reply(self, client: str) -> str:
        return f"{self.explain_replies()}{encode_level(client)}"

    # subscription filters
    def all_alarms(self) -> str:
        return f"{self.base}/+/alarms/+"

    def all_diagnoses(self) -> str:
        return f"{self.base}/+/diagnosis/+"

    def all_streams(self) -> str:
        return f"{self.base}/+/diagnosis/+/stream"

    def all_diagnosis_jobs(self) -> str:
        return f"{self.base}/+/diagnosis/+/job"

    def everything(self) -> str:
        return f"{self.base}/#"

    def parse(self, topic: str) -> TopicParts | None:
        """Read a topic of this scheme (any site/line under this prefix); None when it is not one of ours."""
        return parse(topic, self.prefix)


def parse(topic: str, prefix: str = DEFAULT_PREFIX) -> TopicParts | None:
    """Split a topic of the scheme into its parts; None for a topic outside the scheme."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) < 3:
        return None
    site, line, rest = decode_level(levels[0]), decode_level(levels[1]), levels[2:]
    if rest == ["events"]:
        return TopicParts("events", site, line)
    if rest == ["status"]:
        return TopicParts("status", site, line)
    if rest == ["handover"]:
        return TopicParts("handover", site, line)
    if len(rest) == 2 and rest[0] in ("commands", "ask") and rest[1] != REPLY:
        return TopicParts(rest[0], site, line, user=decode_level(rest[1]))
    if len(rest) == 3 and rest[:2] == ["commands", "reply"]:
        return TopicParts("command_reply", site, line, request_id=decode_level(rest[2]))
    if len(rest) == 3 and rest[:2] == ["ask", "reply"]:
        return TopicParts("answer", site, line, request_id=decode_level(rest[2]))
    if len(rest) in (3, 4) and rest[1] in ("alarms", "diagnosis"):
        asset, alarm_id = decode_level(rest[0]), decode_level(rest[2])
        if len(rest) == 3:
            return TopicParts("alarm" if rest[1] == "alarms" else "diagnosis", site, line, asset, alarm_id)
        if rest[1] == "diagnosis" and rest[3] in ("stream", "job"):
            return TopicParts("stream" if rest[3] == "stream" else "diagnosis_job", site, line, asset, alarm_id)
    return None
