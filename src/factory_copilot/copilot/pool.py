"""A line's model calls sent to the site's pool of explainers over MQTT 5: ``PoolBackend``, an ``LLMBackend``.

Each call is one job, answered by whichever explainer (``factory-copilot explainer``, explainer.py) the broker hands
it to:

    -> <prefix>/<site>/explain/jobs, QoS 1, response topic <prefix>/<site>/<line>/explain/reply/<client>,
       correlation data the job key, message expiry at its deadline:
       {"v": 1, "key": "...", "call": "chat" | "answer", "messages": [...], "form": {AnswerForm} | null,
        "schema": {...} | null, "max_tokens": N, "prefill": "", "stop": [...] | null, "grammar": "..." | null,
        "priority": 1-5, "deadline": <unix time>, "lease_s": 10, "line": "<site>/<line>"}
    <- on the response topic, with the job's correlation data, each naming its "worker":
       {"state": "queued" | "running"}   (when taken, and again every lease_s/3 while the explainer holds it)
       {"token": "..."}                  (QoS 0: the answer's pieces as they are written)
       {"done": true, "text": "...", "stats": {...}}
       {"error": "timeout" | "unavailable" | "backend", "message": "...", "partial": "..."}

The job key is what the caller names the call for (``CALL_FOR``: the alarm event, the question's request id), made
unique here. Exactly one result per key reaches the caller: a job no explainer has spoken of for ``lease_s`` (none
listens, or the one that took it died) is published again with the same key, ``retries`` times at most, and a
second result of a job done twice is dropped and counted. The lease runs from the broker's acknowledgement (PUBACK)
and only while this pool's connection is up: a job paho holds during a broker outage is sent when the broker is
back, once, and a lease that ran out with the connection down says nothing of an explainer. ``stats()["problems"]``
says what the line's /health names: the broker unreachable, or jobs no explainer spoke of for longer than the lease.
Past its deadline (wall time, outage or not) the call raises ``ModelTimeout``, so the station's runbook diagnosis
stands with that reason (station.py counts it as a fallback and logs it). At most
``max_pending`` jobs are out at once; the others wait here, the most urgent first (``CallFor.priority``, then the
oldest), so the least urgent, newest job waits longest, and ends in ``ModelTimeout`` unsent if its deadline passes.
Pieces stream from the first explainer that took the job only: a job redone elsewhere streams no more, and its
result is whole.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from factory_copilot.config import MqttConnection
from factory_copilot.copilot.language_model import (CALL_FOR, AnswerForm, BackendError, LLMBackend, Messages,
                                                    ModelTimeout, ModelUnavailable, OnToken, Reply)
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.names import DEFAULT_PREFIX
from factory_copilot.publish.topics import Topics

log = logging.getLogger(__name__)

JOB_VERSION = 1
FINISHED_KEPT = 2000  # finished job keys remembered, to tell a duplicate result from a stranger's
CONNECT_WAIT_S = 3.0  # the first call waits this long for the broker; later ones are queued by paho while it is away
JSON = "application/json"


@dataclass(eq=False)
class _Job:
    key: str
    body: dict[str, Any]
    priority: int
    seq: int
    deadline: float  # monotonic
    on_token: OnToken | None
    sent: int = 0
    # monotonic: no word from an explainer by then, the job goes out again; inf until the broker acknowledged
    # the job (paho holds it and sends it when connected) and while the pool's connection is down (paused)
    lease_until: float = math.inf
    lease_left: float | None = None  # the lease left when the connection went down, given back once it is up
    reached: float = 0.0  # monotonic: when the broker first acknowledged it (0: not yet)
    owner: str | None = None  # the first explainer that spoke of it: its pieces stream to the caller
    outcome: dict[str, Any] | None = None
    pieces: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class PoolBackend(LLMBackend):
    """The site's explainers as this line's model; see the module docstring. ``forms``: the explainers run GGUF
    models (the diagnosis' form, prefill and grammar work), False for explainers in front of OpenAI servers."""

    supports_prefill = True  # as the explainers' GGUF models do; ``forms=False`` says otherwise for servers
    supports_forms = True

    def __init__(self, conn: MqttConnection, site: str, line: str, *, prefix: str = DEFAULT_PREFIX,
                 lease_s: float = 10.0, retries: int = 2, deadline_s: float = 120.0, max_pending: int = 4,
                 forms: bool = True, client_id: str | None = None, log_every_s: float = 30.0):
        self.topics = Topics(site, line, prefix)
        self.jobs_topic = self.topics.explain_jobs()
        self.client_id = client_id or f"factory-copilot-pool-{uuid.uuid4().hex[:8]}"
        self.reply_topic = self.topics.explain_reply(self.client_id)
        self.line = f"{site}/{line}"
        self.name = f"explainers@{site}"
        if not forms:
            self.supports_prefill = self.supports_forms = False
        self.lease_s, self.retries, self.deadline_s, self.max_pending = lease_s, retries, deadline_s, max_pending
        self.session = MqttSession(conn, role="explainer pool", client_id=self.client_id,
                                   subscriptions=[(self.reply_topic, 1)], on_message=self._on_reply,
                                   on_up=self._on_up, on_down=self._on_down, on_publish=self._on_publish)
        self._down_since: float | None = None  # wall time: the pool's connection to the broker went down
        self._up_at = 0.0  # monotonic: the pool's connection last came up
        self._by_mid: dict[int, _Job] = {}  # job publishes paho has not yet had acknowledged, by message id
        self._early_acks: set[int] = set()  # acknowledged before publish() returned the message id
        self.counts = {"jobs": 0, "answered": 0, "failed": 0, "timeouts": 0, "expired_waiting": 0, "republished": 0,
                       "duplicates": 0, "late": 0, "unreadable": 0}
        self._cond = threading.Condition()
        self._waiting: list[_Job] = []
        self._out: dict[str, _Job] = {}
        self._finished: OrderedDict[str, bool] = OrderedDict()  # key -> answered (False: given up on)
        self._seq = itertools.count()
        self._started = False
        self._starting = threading.Lock()
        self._closed = False
        self._log = Throttled(log, log_every_s)

    # ---- the protocol ---------------------------------------------------------------------------------------

    def chat(self, messages: Messages, schema: dict | None = None, max_tokens: int = 512,
             on_token: OnToken | None = None, timeout_s: float | None = None, prefill: str = "",
             stop: list[str] | None = None, grammar: str | None = None) -> Reply:
        if (prefill or grammar) and not self.supports_prefill:
            raise BackendError(f"{self.name}: the explainers run servers (pool forms: false): no prefill, no grammar")
        return self._submit({"call": "chat", "messages": messages, "schema": schema, "max_tokens": max_tokens,
                             "prefill": prefill, "stop": stop, "grammar": grammar}, on_token, timeout_s)

    def answer(self, messages: Messages, form: AnswerForm, on_token: OnToken | None = None,
               timeout_s: float | None = None) -> Reply:
        if not self.supports_forms:
            raise BackendError(f"{self.name}: the explainers run servers (pool forms: false): no answer forms")
        form_dict = form.to_dict() if isinstance(form, AnswerForm) else form
        return self._submit({"call": "answer", "messages": messages, "form": form_dict,
                             "max_tokens": form_dict.get("max_tokens")}, on_token, timeout_s)

    def warm(self, system: str, user_prefix: str = "", timeout_s: float | None = None) -> Reply:
        """Nothing to warm here: each explainer keeps its own model's prompt cache."""
        self._start()
        return Reply("", {})

    def close(self) -> None:
        """Stop: calls still waiting end ``ModelUnavailable`` now, not at their deadline."""
        with self._cond:
            self._closed = True
            for job in [*self._waiting, *self._out.values()]:
                if job.outcome is None:
                    job.outcome = {"error": "unavailable", "message": "the copilot is shutting down"}
                    job.done.set()
            self._cond.notify_all()
        self.session.stop()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            waiting, out = len(self._waiting), len(self._out)
            now = time.monotonic()
            # counted from the broker's acknowledgement or the last reconnect: an outage is not the explainers' silence
            unheard = [now - max(j.reached, self._up_at) for j in self._out.values()
                       if j.reached and j.owner is None and j.outcome is None]
            down_since = self._down_since
            unacked = sum(1 for j in self._out.values() if j.sent and not j.reached and j.outcome is None)
        problems = []  # said in the line's /health (service.py), each as "explain pool: ..."
        if down_since is not None:
            problems.append(f"site broker {self.session.where} unreachable since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(down_since))}: jobs wait")
        elif unheard and max(unheard) > self.lease_s:
            problems.append(f"no explainer took a job for {round(max(unheard), 1):g} s ({len(unheard)} waiting at "
                            f"{self.jobs_topic})")
        return {"pool": self.jobs_topic, "connected": self.session.connected, **self.counts, "waiting": waiting,
                "out": out, "unacked": unacked, "problems": problems}  # unacked: held by paho for the broker

    # ---- one call -------------------------------------------------------------------------------------------

    def _start(self) -> None:
        # a call racing the first one waits until the session has its client, else its publish finds none; not
        # under self._cond, which the session's callbacks take
        with self._starting:
            if self._started:
                return
            self.session.start()
            self._started = True
        self.session.wait_connected(CONNECT_WAIT_S)  # else paho sends the job once the broker is back

    def _submit(self, call: dict[str, Any], on_token: OnToken | None, timeout_s: float | None) -> Reply:
        self._start()
        if not self.session.v5:
            raise ModelUnavailable(f"the broker {self.session.where} speaks only MQTT 3.1.1: the explainer pool "
                                   "needs MQTT 5 (response topic, correlation data)")
        called = CALL_FOR.get()
        budget = min(timeout_s, self.deadline_s) if timeout_s else self.deadline_s
        priority = called.priority if called else 0
        with self._cond:
            if self._closed:
                raise ModelUnavailable("the copilot is shutting down")
            key = self._unique(called.key if called else uuid.uuid4().hex)
            body = {"v": JOB_VERSION, "key": key, **call, "priority": priority, "deadline": time.time() + budget,
                    "lease_s": self.lease_s, "line": self.line}
            job = _Job(key, body, priority, next(self._seq), time.monotonic() + budget, on_token)
            self.counts["jobs"] += 1
            self._waiting.append(job)
            while not self._admitted(job):
                left = job.deadline - time.monotonic()
                if left <= 0 or job.outcome is not None:
                    self._waiting.remove(job)
                    self._finish(key, False)
                    if job.outcome is not None:  # closed meanwhile
                        raise ModelUnavailable(job.outcome["message"])
                    self.counts["expired_waiting"] += 1
                    raise ModelTimeout(f"waited {budget:g} s for a place among the {len(self._out)} jobs out at "
                                       f"{self.name} (max_pending {self.max_pending}): never sent")
                self._cond.wait(left)
            self._waiting.remove(job)
            self._out[key] = job
        try:
            return self._await(job, budget)
        finally:
            with self._cond:
                self._out.pop(key, None)
                self._finish(key, job.outcome is not None and bool(job.outcome.get("done")))
                self._cond.notify_all()

    def _admitted(self, job: _Job) -> bool:
        """Its turn to go out: a place is free and no waiting job is more urgent, or as urgent and older."""
        return (len(self._out) < self.max_pending
                and max(self._waiting, key=lambda j: (j.priority, -j.seq)) is job)

    def _unique(self, key: str) -> str:
        """``key``, or ``key~2``, ... when this copilot has used it already (the two calls of a two-step answer)."""
        taken = set(self._finished) | set(self._out) | {j.key for j in self._waiting}
        unique, n = key, 1
        while unique in taken:
            n += 1
            unique = f"{key}~{n}"
        return unique

    def _count(self, what: str) -> None:
        with self._cond:  # callers' threads and paho's count side by side
            self.counts[what] += 1

    def _finish(self, key: str, answered: bool) -> None:
        self._finished[key] = answered
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)

    def _send(self, job: _Job) -> None:
        """Hand the job to paho; its lease starts when the broker acknowledges it (``_on_publish``)."""
        left = max(1, math.ceil(job.deadline - time.monotonic()))
        props = self.session.properties(content_type=JSON, response_topic=self.reply_topic,
                                        correlation=job.key.encode(), expiry_s=left)
        with self._cond:
            job.sent += 1
            job.lease_until, job.lease_left = math.inf, None
        try:
            # not under self._cond: paho's thread holds its own lock while it calls _on_publish, which takes ours
            info = self.session.publish(self.jobs_topic, json.dumps(job.body), qos=1, properties=props)
        except RuntimeError as exc:  # the session stopped: the copilot is shutting down
            raise ModelUnavailable(f"{self.name}: {exc}") from None
        with self._cond:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._lease(job)
            else:
                self._by_mid[info.mid] = job

    def _lease(self, job: _Job) -> None:
        """The broker has the job: its lease runs from now (paused if the connection is down meanwhile)."""
        job.reached = job.reached or time.monotonic()
        if self.session.connected:
            job.lease_until = time.monotonic() + self.lease_s
        else:
            job.lease_left = self.lease_s
        self._cond.notify_all()

    def _await(self, job: _Job, budget: float) -> Reply:
        self._send(job)
        while True:
            with self._cond:  # woken by a result, an acknowledgement, a reconnect (all notify)
                while True:
                    outcome, now = job.outcome, time.monotonic()
                    lease_over = now >= job.lease_until
                    if outcome is not None or lease_over or now >= job.deadline:
                        break
                    self._cond.wait(min(job.deadline, job.lease_until) - now)
            if outcome is not None:
                return self._result(job, outcome)
            if now >= job.deadline:
                self._count("timeouts")
                away = "" if self.session.connected else f"; the broker {self.session.where} is not connected"
                raise ModelTimeout(f"no explainer at {self.jobs_topic} answered within {budget:g} s "
                                   f"(sent {job.sent} time{'s' if job.sent > 1 else ''}{away})", "".join(job.pieces))
            if lease_over and job.sent <= self.retries:
                self._count("republished")
                self._log.warning("lease", "explainer pool %s: no explainer spoke of job %s for %g s: published "
                                  "again (%d of %d)", self.jobs_topic, printable(job.key), self.lease_s, job.sent,
                                  self.retries)
                self._send(job)
            elif lease_over:
                with self._cond:
                    job.lease_until = math.inf  # no more retries: its deadline is all that is left

    def _result(self, job: _Job, outcome: dict[str, Any]) -> Reply:
        if outcome.get("done"):
            self._count("answered")
            stats = {k: float(v) for k, v in (outcome.get("stats") or {}).items() if isinstance(v, (int, float))}
            return Reply(str(outcome.get("text") or ""), {**stats, "sends": float(job.sent)})
        self._count("failed")
        where = f"explainer {printable(outcome.get('worker', '?'))}: {printable(outcome.get('message', ''), 500)}"
        if outcome.get("error") == "timeout":
            raise ModelTimeout(where, str(outcome.get("partial") or ""))
        if outcome.get("error") == "unavailable":
            raise ModelUnavailable(where)
        raise BackendError(where)

    # ---- the connection (paho's thread): a lease counts only while the broker can pass word ------------------

    def _on_publish(self, mid: int, failure: str | None) -> None:
        with self._cond:
            job = self._by_mid.pop(mid, None)
            if job is None:
                self._early_acks.add(mid)
            elif job.outcome is None:
                self._lease(job)

    def _on_down(self, why: str) -> None:
        now = time.monotonic()
        with self._cond:
            if self._down_since is None:
                self._down_since = time.time()
            for job in self._out.values():
                if job.lease_until != math.inf:
                    job.lease_left, job.lease_until = max(0.0, job.lease_until - now), math.inf

    def _on_up(self) -> None:
        now = time.monotonic()
        with self._cond:
            self._down_since, self._up_at = None, now
            for job in self._out.values():
                if job.lease_left is not None:
                    job.lease_until, job.lease_left = now + job.lease_left, None
            self._cond.notify_all()

    # ---- replies (paho's thread) ----------------------------------------------------------------------------

    def _on_reply(self, msg: paho.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        try:
            key = bytes(correlation).decode() if correlation is not None else None
            data = json.loads(msg.payload)
            if key is None or not isinstance(data, dict):
                raise ValueError("no correlation data" if key is None else "not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            self._count("unreadable")
            self._log.warning("unreadable", "explainer pool: unreadable reply on %s: %s", printable(msg.topic), exc)
            return
        result = "done" in data or "error" in data
        relay, piece = None, None
        with self._cond:
            job = self._out.get(key)
            if job is None or job.outcome is not None:
                if result and (key in self._finished and self._finished[key] or job is not None):
                    self.counts["duplicates"] += 1  # a job done twice (published again, both answered)
                    self._log.info("duplicate", "explainer pool: a second result of job %s dropped (from %s)",
                                   printable(key), printable(data.get("worker", "?")))
                elif result:
                    self.counts["late"] += 1  # its caller gave up (deadline) before it came
                return
            if result:
                job.outcome = data
                job.done.set()
                self._cond.notify_all()
                return
            worker = str(data.get("worker", "?"))
            job.lease_until = max(job.lease_until, time.monotonic() + self.lease_s)
            if job.owner is None:
                job.owner = worker
            if "token" in data and worker == job.owner:
                piece = str(data["token"])
                job.pieces.append(piece)
                relay = job.on_token
        if relay is not None and piece:
            relay(piece)
