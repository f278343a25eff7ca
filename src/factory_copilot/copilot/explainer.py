"""The ``explainer`` sub-command: one of the site's explainers, running the lines' explain jobs on a model of its own.

    factory-copilot explainer --broker mqtt://site-broker:1883 --site plant-a --model models/qwen2.5-1.5b-instruct-q4_k_m.gguf
    factory-copilot explainer --broker mqtt://site-broker:1883 --site plant-a --openai-url http://127.0.0.1:8080/v1

Every explainer of a site subscribes to ``$share/explainers/<prefix>/<site>/explain/jobs`` (QoS 1): the broker hands
each job to one of them, so another explainer started anywhere adds capacity, and one that dies holds up its jobs
only until their lease runs out (the line publishes them again). The jobs it holds wait the most urgent first; one
past its deadline is dropped unrun and counted (its caller has given up; the site's clocks must agree, NTP). Its
counters go to the log every ``--report-every`` seconds and to standard output, one JSON line, when it stops
(SIGTERM: after the job it is running; the jobs it held are published again by their lines when their lease ends).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from factory_copilot.config import MqttConnection
from factory_copilot.copilot.language_model import (AnswerForm, BackendError, LLMBackend, ModelTimeout,
                                                    ModelUnavailable, Reply)
from factory_copilot.copilot.pool import JOB_VERSION
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.plumbing.mqtt import MqttSession, connection_of
from factory_copilot.names import DEFAULT_PREFIX
from factory_copilot.publish.topics import Topics, encode_level

log = logging.getLogger(__name__)

GROUP = "explainers"  # the shared subscription's group: every explainer of the site is in it
JSON = "application/json"


@dataclass(eq=False)
class _Held:
    key: str
    correlation: bytes
    reply_to: str
    body: dict[str, Any]
    priority: int
    seq: int
    deadline: float  # unix time
    lease_s: float
    said_at: float = 0.0  # monotonic: when it last told the line it holds the job
    state: str = "queued"
    started: float = field(default_factory=time.monotonic)


class Explainer:
    """One explainer: takes jobs from the shared subscription, runs them on ``backend`` one at a time, replies."""

    def __init__(self, conn: MqttConnection, site: str, backend: LLMBackend, *, prefix: str = DEFAULT_PREFIX,
                 name: str | None = None, log_every_s: float = 30.0):
        self.backend = backend
        self.site, self.prefix = site, prefix
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.jobs_topic = Topics(site, "+", prefix).explain_jobs()
        self.subscription = f"$share/{GROUP}/{self.jobs_topic}"
        self._reply_head = f"{prefix}/{encode_level(site)}/"
        self.session = MqttSession(conn, role="explainer", client_id=f"factory-copilot-explainer-{self.name}",
                                   subscriptions=[(self.subscription, 1)], on_message=self._on_job,
                                   on_subscribed=self._taking)
        self.counts = {"received": 0, "done": 0, "failed": 0, "expired": 0, "unreadable": 0, "refused": 0}
        self._cond = threading.Condition()
        self._held: list[_Held] = []
        self._running: _Held | None = None
        self._seq = 0
        self._log = Throttled(log, log_every_s)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            held = len(self._held)
        return {"explainer": self.name, "jobs": self.jobs_topic, "model": self.backend.name,
                "connected": self.session.connected, **self.counts, "waiting": held}

    # ---- jobs in (paho's thread) ----------------------------------------------------------------------------

    def _taking(self) -> None:
        log.info("explainer %s taking jobs from %s", self.name, self.subscription)

    def _on_job(self, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        reply_to = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        try:
            body = json.loads(msg.payload)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            if body.get("v") != JOB_VERSION:
                raise ValueError(f"job version {printable(body.get('v'))}: this explainer reads version {JOB_VERSION}")
            key, call = body.get("key"), body.get("call")
            if not isinstance(key, str) or not key:
                raise ValueError("no job key")
            if call not in ("chat", "answer") or not isinstance(body.get("messages"), list):
                raise ValueError(f"job {printable(key)}: call {printable(call)} with messages is not a job this "
                                 "explainer runs (chat or answer)")
            if call == "answer" and not isinstance(body.get("form"), dict):
                raise ValueError(f"job {printable(key)}: an answer without its form")
            deadline, lease_s = float(body["deadline"]), float(body.get("lease_s") or 10.0)
            priority = int(body.get("priority") or 0)
            if correlation is None or not reply_to:
                raise ValueError(f"job {printable(key)}: no response topic or correlation data (an MQTT 5 job)")
        except (ValueError, TypeError, KeyError) as exc:
            self._count("unreadable")
            self._log.warning("unreadable", "explainer %s: unreadable job on %s: %s", self.name, printable(msg.topic),
                              printable(exc))
            return
        if not self._ours(reply_to):  # a reply goes to a line's own reply level of this site, nowhere else
            self._count("refused")
            self._log.warning("refused", "explainer %s: job %s refused: its response topic %s is no line's "
                              "explain/reply/ topic under %s", self.name, printable(key), printable(reply_to),
                              self._reply_head)
            return
        with self._cond:
            self._seq += 1
            job = _Held(key, bytes(correlation), reply_to, body, priority, self._seq, deadline, lease_s)
            self.counts["received"] += 1
            self._held.append(job)
            self._cond.notify_all()
        self._say(job, {"state": "queued"})

    def _ours(self, topic: str) -> bool:
        if not topic.startswith(self._reply_head):
            return False
        levels = topic[len(self._reply_head):].split("/")
        return len(levels) == 4 and levels[1:3] == ["explain", "reply"] and all(levels) and not any(
            c in topic for c in "+#")

    def _count(self, what: str) -> None:
        with self._cond:
            self.counts[what] += 1

    def _say(self, job: _Held, what: dict[str, Any], qos: int = 0) -> None:
        """A reply to the job's line: its correlation data, this explainer's name."""
        job.said_at = time.monotonic()
        props = self.session.properties(content_type=JSON, correlation=job.correlation)
        try:
            self.session.publish(job.reply_to, json.dumps({**what, "worker": self.name}), qos=qos, properties=props)
        except (RuntimeError, ValueError) as exc:  # stopping, or a topic the broker's client refuses
            self._log.warning("reply", "explainer %s: reply to job %s not sent: %s", self.name, printable(job.key), exc)

    # ---- the work -------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, report_every_s: float = 60.0) -> None:
        """Take and run jobs until ``stop``; counters to the log every ``report_every_s``."""
        self.session.start()
        threading.Thread(target=self._keep_leases, args=(stop,), name="explainer-leases", daemon=True).start()
        log.info("explainer %s starting on %s (model %s)", self.name, self.session.where, self.backend.name)
        reported = time.monotonic()
        while not stop.is_set():
            with self._cond:
                if not self._held:
                    self._cond.wait(0.5)
                    job = None
                else:
                    job = max(self._held, key=lambda j: (j.priority, -j.seq))
                    self._held.remove(job)
                    self._running = job
            if job is not None:
                try:
                    self._work(job)
                finally:
                    with self._cond:
                        self._running = None
            if time.monotonic() - reported >= report_every_s:
                reported = time.monotonic()
                log.info("explainer %s: %s", self.name, json.dumps(self.stats()))
        self.session.stop()

    def _work(self, job: _Held) -> None:
        left = job.deadline - time.time()
        if left <= 0:
            self._count("expired")
            self._log.warning("expired", "explainer %s: job %s dropped unrun: %.1f s past its deadline", self.name,
                              printable(job.key), -left)
            return
        job.state = "running"
        self._say(job, {"state": "running"})
        b = job.body
        on_token = lambda piece: self._say(job, {"token": piece})  # noqa: E731
        try:
            if b["call"] == "answer":
                reply: Reply = self.backend.answer(b["messages"], AnswerForm.from_dict(b["form"]), on_token, left)
            else:
                reply = self.backend.chat(b["messages"], b.get("schema"), int(b.get("max_tokens") or 512), on_token,
                                          left, b.get("prefill") or "", b.get("stop"), b.get("grammar"))
            outcome: dict[str, Any] = {"done": True, "text": reply.text, "stats": reply.stats}
            self._count("done")
        except ModelTimeout as exc:
            outcome = {"error": "timeout", "message": str(exc), "partial": exc.partial}
        except ModelUnavailable as exc:
            outcome = {"error": "unavailable", "message": str(exc)}
        except Exception as exc:  # one bad job costs that job, never the explainer
            outcome = {"error": "backend", "message": f"{type(exc).__name__}: {exc}"}
            if not isinstance(exc, BackendError):
                log.exception("explainer %s: job %s failed", self.name, printable(job.key))
        if "error" in outcome:
            self._count("failed")
            self._log.warning("failed", "explainer %s: job %s: %s", self.name, printable(job.key),
                              printable(outcome["message"]))
        self._say(job, outcome, qos=1)

    def _keep_leases(self, stop: threading.Event) -> None:
        """Tell each job's line, every third of its lease, that the job is held here (queued or running)."""
        while not stop.wait(0.1):
            with self._cond:
                held = [*self._held, *([self._running] if self._running else [])]
            now = time.monotonic()
            for job in held:
                if now - job.said_at >= job.lease_s / 3:
                    self._say(job, {"state": job.state})


# ---- the command --------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("explainer", help="one of the site's explainers: runs the lines' explain jobs on a model",
                              description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True, help="the site broker, mqtt://HOST:PORT (mqtts:// for TLS)")
    p.add_argument("--site", required=True, help="the site whose lines' jobs it takes")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--username", help="MQTT user (or in the URL)")
    p.add_argument("--password", help="MQTT password (or FACTORY_COPILOT_MQTT_PASSWORD)")
    p.add_argument("--ca-file", help="CA certificate of the broker (mqtts://)")
    p.add_argument("--name", help="this explainer's name in replies and the log (default HOST-PID)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a GGUF model file, run in a child process")
    model.add_argument("--openai-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--openai-model", default="qwen2.5-1.5b-instruct", help="model name for the endpoint")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores but one)")
    p.add_argument("--ctx", type=int, default=4096, help="llama.cpp context size (default 4096)")
    p.add_argument("--report-every", type=float, default=60.0, help="seconds between counter lines in the log")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from factory_copilot.copilot.backends import OpenAIBackend
    from factory_copilot.copilot.worker import LocalModel

    try:
        conn = connection_of(args.broker, args.username,
                             args.password or os.environ.get("FACTORY_COPILOT_MQTT_PASSWORD"))
    except ValueError as exc:
        print(f"error: --broker {exc}", file=sys.stderr)
        return 2
    if args.ca_file:
        conn = conn.model_copy(update={"ca_file": args.ca_file})
    backend: LLMBackend = (OpenAIBackend(args.openai_url, model=args.openai_model) if args.openai_url else
                           LocalModel(args.model, n_threads=args.threads, n_ctx=args.ctx))
    try:  # the model first: an explainer that cannot run its model must not take the site's jobs
        backend.chat([{"role": "user", "content": "ready?"}], max_tokens=1, timeout_s=300.0)
    except BackendError as exc:
        print(f"error: the explainer's model: {exc.reason}: {exc}", file=sys.stderr)
        backend.close()
        return 2
    explainer = Explainer(conn, args.site, backend, prefix=args.prefix, name=args.name)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        explainer.run(stop, args.report_every)
    finally:
        backend.close()
        print(json.dumps(explainer.stats()), flush=True)
    return 0
