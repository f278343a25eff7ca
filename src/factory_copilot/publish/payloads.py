"""The JSON payloads of the MQTT interface: built from records, checked against the versioned schemas in ``schemas/``.

Every payload carries ``"schema": "<kind>/<version>"``, and its JSON Schema has
``$id`` ``https://factory-copilot.org/schemas/<kind>/<version>.json``. Incoming
commands, feedback and questions are parsed here into records or into one clear error.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

from factory_copilot import __version__
from factory_copilot.plumbing import safejson
from factory_copilot.records import (FEEDBACK_VERDICTS, AlarmEvent, Alarm, CommandKind, CommandResult, Diagnosis,
                                     Handover, HandoverAck, ModelJob, OperatorCommand, OperatorFeedback, Question)
from factory_copilot.errors import FactoryCopilotError

# the MQTT contract ships inside the package (an installed wheel validates what it sends and takes)
SCHEMAS_DIR = Path(os.environ.get("FACTORY_COPILOT_SCHEMAS")
                   or str(importlib.resources.files("factory_copilot.publish") / "schemas"))
SCHEMA_BASE = "https://factory-copilot.org/schemas"
VERSION = 1
ALARM, EVENT, DIAGNOSIS, STREAM, STATUS = "alarm/1", "event/1", "diagnosis/1", "diagnosis-stream/1", "status/1"
COMMAND, COMMAND_REPLY, ASK, ANSWER = "command/1", "command-reply/1", "ask/1", "answer/1"
MODEL_JOB = "model-job/1"
HANDOVER, HANDOVER_ACK = "handover/1", "handover-ack/1"
FEEDBACK = "feedback/1"
KINDS = (ALARM, EVENT, DIAGNOSIS, STREAM, STATUS, COMMAND, COMMAND_REPLY, ASK, ANSWER, MODEL_JOB, HANDOVER,
         HANDOVER_ACK, FEEDBACK)


class PayloadError(FactoryCopilotError, ValueError):
    """A payload that does not match its schema; the message names the field and the problem."""


def schema_id(kind: str) -> str:
    return f"{SCHEMA_BASE}/{kind}.json"


@functools.cache
def _registry() -> Registry:
    resources = []
    for kind in KINDS:
        path = SCHEMAS_DIR / f"{kind}.json"
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{path}: cannot load the {kind} schema: {exc}") from None
        if body.get("$id") != schema_id(kind):
            raise RuntimeError(f"{path}: $id is {body.get('$id')!r}, expected {schema_id(kind)!r}")
        resources.append((body["$id"], Resource.from_contents(body)))
    return Registry().with_resources(resources)


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    body = _registry().contents(schema_id(kind))
    cls = jsonschema.validators.validator_for(body)
    return cls(body, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


def load_schema(kind: str) -> dict[str, Any]:
    return _registry().contents(schema_id(kind))


def problems(payload: Any, kind: str | None = None) -> list[str]:
    """Every way ``payload`` breaks its schema (``kind`` defaults to its own ``schema`` field), as ``field: message``."""
    if kind is None:
        kind = payload.get("schema") if isinstance(payload, dict) else None
        if kind not in KINDS:
            return [f"schema: {kind!r} is not a known payload kind ({', '.join(KINDS)})"]
    out = []
    for err in sorted(_validator(kind).iter_errors(payload), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(payload)"
        out.append(f"{where}: {err.message}")
    return out


def validate(payload: Any, kind: str | None = None) -> None:
    found = problems(payload, kind)
    if found:
        raise PayloadError("; ".join(found))


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False, default=_jsonable).encode()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value"):  # enums that slipped through
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---- outgoing payloads -------------------------------------------------------------------------------------------


def alarm_state(alarm: Alarm, site: str, line: str) -> dict[str, Any]:
    return {"schema": ALARM, "site": site, "line": line, "published_at": time.time(), **alarm.to_dict()}


def event(ev: AlarmEvent, site: str, line: str) -> dict[str, Any]:
    body = {"schema": EVENT, "site": site, "line": line, **ev.to_dict()}
    if ev.event == "overdue" and ev.alarm.overdue:
        body["notify"] = ev.alarm.overdue[-1]  # the group told by this event: what a pager gateway routes on
    return body


# whose words a diagnosis or an answer are ("model" or "runbook"): ``origin`` in the records; on MQTT the diagnosis/1
# and answer/1 field keeps its name "source" for subscribers, mapped here only (builders below, subscriber's readers)
WIRE_ORIGIN = "source"


def diagnosis_fields(d: Diagnosis) -> dict[str, Any]:
    """A diagnosis' fields under their diagnosis/1 names (what ``explain --json`` prints too)."""
    return {(WIRE_ORIGIN if k == "origin" else k): v for k, v in d.to_dict().items()}


def diagnosis(d: Diagnosis, asset: str, site: str, line: str) -> dict[str, Any]:
    return {"schema": DIAGNOSIS, "site": site, "line": line, **diagnosis_fields(d), "asset": asset}


def stream_chunk(alarm_id: str, asset: str, seq: int, token: str, done: bool) -> dict[str, Any]:
    return {"schema": STREAM, "alarm_id": alarm_id, "asset": asset, "seq": seq, "token": token, "done": done, "ts": time.time()}


def status(state: str, site: str, line: str, started_at: float, client_id: str, instance: str | None = None,
           every_s: float | None = None, reasons: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": STATUS,
        "site": site,
        "line": line,
        "state": state,
        "version": __version__,
        "started_at": started_at,
        "client_id": client_id,
        "ts": time.time(),
    }
    if instance:
        body["instance"] = instance  # host:pid, so a second instance can name the first
    if every_s and state == "online":
        body["every_s"] = every_s  # said again this often: a status older than a few of these is a line gone quiet
    if reasons is not None and state == "online":  # the service's /health, for a site page: ok, or what is down
        body["health"] = "degraded" if reasons else "ok"
        body["reasons"] = [str(r)[:300] for r in reasons[:20]]
    return body


def handover(h: Handover) -> dict[str, Any]:
    """The handover/1 payload: the handover's body with who acknowledged it so far."""
    return {**h.body, "schema": HANDOVER, "acknowledged": list(h.acknowledged)}


def command_reply(result: CommandResult) -> dict[str, Any]:
    return {"schema": COMMAND_REPLY, **result.to_dict(), "ts": time.time()}


def model_job(job: ModelJob, site: str, line: str) -> dict[str, Any]:
    return {"schema": MODEL_JOB, "site": site, "line": line, **job.to_dict()}


def answer(
    request_id: str | None, alarm_id: str | None, seq: int, token: str, done: bool, text: str | None = None,
    error: str | None = None, origin: str | None = None,
) -> dict[str, Any]:
    body = {
        "schema": ANSWER,
        "request_id": request_id,
        "alarm_id": alarm_id,
        "seq": seq,
        "token": token,
        "done": done,
        "text": text,
        "ts": time.time(),
    }
    if error is not None:
        body["error"] = error
    if origin is not None:
        body[WIRE_ORIGIN] = origin
    return body


# ---- read back by a subscriber (the dashboard) -------------------------------------------------------------------


def parse_diagnosis(body: dict[str, Any]) -> Diagnosis:
    """The Diagnosis a diagnosis/1 payload carries (what a subscriber such as the dashboard reads back)."""
    return Diagnosis.from_dict({("origin" if k == WIRE_ORIGIN else k): v for k, v in body.items()})


def answer_origin(body: dict[str, Any]) -> str | None:
    """Whose answer an answer/1 chunk carries: "model", "runbook", or None on a chunk of tokens only."""
    return body.get(WIRE_ORIGIN)


# ---- requests: what an operator's client sends in (the dashboard, the MCP server's write tools) -----------------
# built here only, beside their parsers below, so every sender writes what the schemas and the service read


def command(kind: CommandKind | str, alarm_id: str, request_id: str, *, actor: str | None = None,
            comment: str | None = None, shelve_s: float | None = None) -> dict[str, Any]:
    """The command/1 payload for ``commands/<user>``; ``actor`` only if given (the topic names the sender anyway).
    A string no ``CommandKind`` has raises ValueError: the schema would refuse it."""
    body: dict[str, Any] = {"schema": COMMAND, "request_id": request_id, "command": CommandKind(kind).value,
                            "alarm_id": alarm_id}
    if actor is not None:
        body["actor"] = actor
    return {**body, "comment": comment, "shelve_s": shelve_s, "ts": time.time()}


def feedback(alarm_id: str, verdict: str, request_id: str, *, actor: str | None = None,
             actual_cause: str | None = None, fix: str | None = None) -> dict[str, Any]:
    """The feedback/1 payload for ``commands/<user>``: an operator's verdict on an alarm. ``actor`` only if given
    (the service takes the sender from the topic). A verdict no ``FEEDBACK_VERDICTS`` has raises ValueError."""
    if verdict not in FEEDBACK_VERDICTS:
        raise ValueError(f"feedback verdict {verdict!r} is not one of {', '.join(FEEDBACK_VERDICTS)}")
    body: dict[str, Any] = {"schema": FEEDBACK, "request_id": request_id, "alarm_id": alarm_id, "verdict": verdict}
    if actor is not None:
        body["actor"] = actor
    return {**body, "actual_cause": actual_cause, "fix": fix, "ts": time.time()}


def question(alarm_id: str | None, text: str, request_id: str, actor: str) -> dict[str, Any]:
    """The ask/1 payload for ``ask/<user>``: a question to the copilot, about an alarm or the line."""
    return {"schema": ASK, "request_id": request_id, "alarm_id": alarm_id, "question": text, "actor": actor,
            "ts": time.time()}


def handover_ack(handover_id: str, request_id: str, actor: str, comment: str | None = None) -> dict[str, Any]:
    """The handover-ack/1 payload for ``commands/<user>``: the incoming operator has read the handover."""
    return {"schema": HANDOVER_ACK, "request_id": request_id, "handover_id": handover_id, "actor": actor,
            "comment": comment, "ts": time.time()}


# ---- incoming payloads -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Rejected:
    """An incoming message that cannot be used: why, and the request id when one could be read (for the reply)."""

    request_id: str | None
    reason: str
    schema: str | None = None  # the kind the payload said it was, when it said one we know (what a log line names)


# a command or a question is a few hundred bytes; a larger payload is refused before it is parsed. Fields are
# limited by the schemas: actor 64, alarm_id 256, comment 1000, question 4000 characters, request_id 128
MAX_INCOMING_BYTES = 64 * 1024
MAX_REASON_CHARS = 300  # a refusal quotes the offending value at most this far: a reply never echoes a payload


def _decode(raw: bytes, kind: str, sender: str, alternatives: tuple[str, ...] = ()) -> dict[str, Any] | Rejected:
    """The payload of ``kind`` (or of one of ``alternatives`` when it names that schema) from ``sender``, or why not."""
    try:
        body = safejson.loads(raw, MAX_INCOMING_BYTES)
    except safejson.BadJson as exc:
        return Rejected(None, f"payload is not usable JSON ({exc.reason}): {exc.detail}")
    if not isinstance(body, dict):
        return Rejected(None, f"payload must be a JSON object, got {type(body).__name__}")
    rid = body.get("request_id")
    rid = rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None
    named = body.get("schema") if body.get("schema") in alternatives else kind
    found = problems(body, named)
    if found:
        return Rejected(rid, "; ".join(_cut(p) for p in found[:5]), named)
    wrong = _sender(body, sender)
    return Rejected(rid, wrong, named) if wrong else body


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + f"...(+{len(text) - MAX_REASON_CHARS} chars)"


def _sender(body: dict[str, Any], sender: str) -> str | None:
    """Why the payload's ``actor`` is refused: the sender is the MQTT user of the topic, and only it."""
    actor = body.get("actor")
    if actor is not None and actor != sender:
        return (f"actor: {_cut(repr(actor))} is not the sender {sender!r} (the MQTT user this came from); "
                "leave actor out or send it as yourself")
    return None


def parse_command(raw: bytes, sender: str) -> OperatorCommand | HandoverAck | OperatorFeedback | Rejected:
    """What arrives on ``commands/<sender>``: an alarm command (command/1), a handover acknowledgement
    (handover-ack/1) or an operator's feedback on an alarm (feedback/1), or why it was rejected (then nothing
    may reach the engine). The actor is always ``sender``, the topic's MQTT user."""
    body = _decode(raw, COMMAND, sender, alternatives=(HANDOVER_ACK, FEEDBACK))
    if isinstance(body, Rejected):
        return body
    if body["schema"] == HANDOVER_ACK:
        return HandoverAck(handover_id=body["handover_id"], actor=sender, comment=body.get("comment"),
                           request_id=body["request_id"])
    if body["schema"] == FEEDBACK:
        return OperatorFeedback(alarm_id=body["alarm_id"], verdict=body["verdict"], actor=sender,
                                actual_cause=body.get("actual_cause") or None, fix=body.get("fix") or None,
                                request_id=body["request_id"])
    return OperatorCommand(
        command=body["command"],
        alarm_id=body["alarm_id"],
        actor=sender,
        comment=body.get("comment"),
        shelve_s=body.get("shelve_s"),
        request_id=body["request_id"],
    )


def parse_question(raw: bytes, sender: str) -> Question | Rejected:
    """A question from ``ask/<sender>``, or why it was rejected."""
    body = _decode(raw, ASK, sender)
    if isinstance(body, Rejected):
        return body
    return Question(request_id=body["request_id"], alarm_id=body["alarm_id"], question=body["question"], actor=sender)
