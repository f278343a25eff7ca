"""The site's pool of explainers (issue 22): a line's model calls as MQTT 5 jobs on a real Mosquitto, run by
``factory-copilot explainer`` processes on the tiny generated GGUF (real llama.cpp inference), or by a hand-made
explainer where a test must hold a job or answer it twice."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_copilot.config import REPO_ROOT, SIMULATED_LINE, LineConfigError, MqttConnection, load_line, parse_line
from factory_copilot.copilot import Copilot
from factory_copilot.copilot.choice import backend_from_settings
from factory_copilot.copilot.language_model import CALL_FOR, AnswerForm, CallFor, ModelTimeout
from factory_copilot.copilot.pool import PoolBackend
from tests.support.brokers import MosquittoBroker
from tests.support.copilot import alarm_for, make_tiny_qwen, ramp

SITE, LINE_NAME = "plant-a", "line-1"
JOBS = f"factory-copilot/{SITE}/explain/jobs"
ASK = [{"role": "user", "content": "why is the pump hot?"}]


@pytest.fixture
def broker(broker):
    """The conftest's broker, if it is Mosquitto: the pool needs MQTT 5 and shared subscriptions (amqtt has neither)."""
    if not isinstance(broker, MosquittoBroker):
        pytest.skip("the explainer pool needs an MQTT 5 broker with shared subscriptions (Mosquitto)")
    return broker


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    return make_tiny_qwen(tmp_path_factory.mktemp("models") / "tiny-qwen.gguf")


def pool(broker, **kw) -> PoolBackend:
    return PoolBackend(MqttConnection(host="127.0.0.1", port=broker.port), SITE, LINE_NAME, **kw)


def until(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


class ExplainerProcess:
    """``factory-copilot explainer`` on the tiny model, in its own process; ready once it takes jobs."""

    def __init__(self, broker, model, name: str):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "factory_copilot.cli", "explainer", "--broker", f"mqtt://127.0.0.1:{broker.port}",
             "--site", SITE, "--model", str(model), "--threads", "1", "--ctx", "4096", "--name", name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.ready = threading.Event()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            if "taking jobs" in line:
                self.ready.set()

    def wait_ready(self) -> "ExplainerProcess":
        assert self.ready.wait(60), "".join(self.log)
        return self

    def children(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self) -> dict:
        """SIGTERM; its counters (the JSON line it prints as it stops)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


@pytest.fixture
def explainers(broker, tiny_qwen):
    started: list[ExplainerProcess] = []

    def start(*names: str) -> list[ExplainerProcess]:
        new = [ExplainerProcess(broker, tiny_qwen, n) for n in names]
        started.extend(new)
        return [e.wait_ready() for e in new]

    yield start
    for e in started:
        if e.proc.poll() is None:
            e.proc.kill()
            e.proc.wait()


class HandMadeExplainer:
    """A test's own explainer on the shared subscription: records the jobs, answers when told (or twice)."""

    def __init__(self, broker, answer_twice: bool = False, hold: bool = False):
        self.jobs: queue.Queue = queue.Queue()
        self.received: list[str] = []
        self.priorities: dict[str, int] = {}
        self.answer_twice, self.hold = answer_twice, hold
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="hand-made", protocol=paho.MQTTv5)
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(f"$share/explainers/{JOBS}", 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        body = json.loads(msg.payload)
        self.received.append(body["key"])
        self.priorities[body["key"]] = body["priority"]
        job = (body, msg.properties.ResponseTopic, msg.properties.CorrelationData)
        if self.hold:
            self.jobs.put(job)
        else:
            self.answer(job)

    def answer(self, job) -> None:
        body, topic, correlation = job
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        for n in range(2 if self.answer_twice else 1):
            self.client.publish(topic, json.dumps({"done": True, "text": f"answer to {body['key']} #{n + 1}",
                                                   "worker": "hand-made"}), qos=1, properties=props)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_call_racing_the_first_one_waits_for_the_session_the_first_one_starts(broker, monkeypatch):
    # found in CI under load: 24 calls at once, the first starting the pool's MQTT session, a second one saw the pool
    # started and published before the session had its client ("MQTT session ... is not started")
    from factory_copilot.plumbing.mqtt import MqttSession

    opening, release = threading.Event(), threading.Event()
    original = MqttSession._open

    def held_open(self):
        opening.set()
        assert release.wait(10)
        original(self)

    explainer = HandMadeExplainer(broker)  # paho's own client, not a session: not held
    monkeypatch.setattr(MqttSession, "_open", held_open)
    backend = pool(broker, deadline_s=20)

    def call(key: str) -> str:
        CALL_FOR.set(CallFor(key))
        return backend.chat(ASK, timeout_s=20).text

    try:
        with ThreadPoolExecutor(2) as ex:
            first = ex.submit(call, "A-1@1.000")
            assert opening.wait(10)  # the first call is opening the session
            second = ex.submit(call, "A-2@1.000")
            # while the session opens, the second call waits for it rather than failing at once
            finished, _ = wait([second], timeout=2)
            assert not finished, second.exception()
            release.set()
            assert (first.result(20), second.result(20)) == ("answer to A-1@1.000 #1", "answer to A-2@1.000 #1")
    finally:
        release.set()
        backend.close()
        explainer.close()


def test_two_explainers_answer_every_job_exactly_once(broker, explainers):
    a, b = explainers("ex-a", "ex-b")
    backend = pool(broker, max_pending=32, deadline_s=60)
    form = AnswerForm(min_chars=8, max_chars=40, max_tokens=16)
    pieces: list[str] = []
    n = 24
    # before them, two jobs whose callers gave up already, and one that names a reply topic outside the scheme:
    # each explainer runs its most urgent job first, so by the last answer every one of these was dealt with
    stale = {"v": 1, "call": "chat", "messages": ASK, "max_tokens": 8, "priority": 5, "deadline": time.time() - 1,
             "lease_s": 10}
    raw = paho.Client(CallbackAPIVersion.VERSION2, client_id="stale-jobs", protocol=paho.MQTTv5)
    raw.connect("127.0.0.1", broker.port)
    raw.loop_start()
    for key, reply_to in [("old-1", f"factory-copilot/{SITE}/{LINE_NAME}/explain/reply/x"),
                          ("old-2", f"factory-copilot/{SITE}/{LINE_NAME}/explain/reply/x"),
                          ("elsewhere", f"factory-copilot/{SITE}/{LINE_NAME}/commands/reply/x")]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = reply_to, key.encode()
        raw.publish(JOBS, json.dumps({**stale, "key": key}), qos=1, properties=props).wait_for_publish(5)
    raw.disconnect()
    raw.loop_stop()
    try:
        def one(i: int):
            CALL_FOR.set(CallFor(f"A-{i}@1000.000", 2))
            return backend.answer(ASK, form, on_token=pieces.append if i == 0 else None, timeout_s=60)

        started = time.perf_counter()
        with ThreadPoolExecutor(n) as ex:
            replies = list(ex.map(one, range(n)))
        took = time.perf_counter() - started
        assert all(r.text.startswith('{"summary":"') for r in replies)  # the form's JSON, written by llama.cpp
        assert pieces and "".join(pieces) in replies[0].text  # the first job's words streamed as they came
        s = backend.stats()
        assert (s["jobs"], s["answered"], s["duplicates"], s["republished"], s["timeouts"]) == (n, n, 0, 0, 0)
    finally:
        backend.close()
    counted = [a.stop(), b.stop()]
    done = [c["done"] for c in counted]
    assert sum(done) == n and min(done) > 0, done  # each job ran once, and the broker shared them out
    assert sum(c["expired"] for c in counted) == 2 and sum(c["refused"] for c in counted) == 1
    print(f"{n} jobs on 2 explainers in {took:.2f} s: {n / took * 60:.0f} jobs/min")


def test_a_job_whose_explainer_is_killed_is_redone_by_the_other_one_result(broker, explainers):
    a, b = explainers("ex-a", "ex-b")
    by_name = {e.name: e for e in (a, b)}
    backend = pool(broker, lease_s=1.0, deadline_s=60)
    # random weights write to the form's token bound: a job of seconds, long enough to be killed in
    long = AnswerForm(min_chars=3000, max_chars=6000, max_tokens=1500)
    killed: list[str] = []
    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=paho.MQTTv5)

    def on_reply(client, userdata, msg):
        said = json.loads(msg.payload)
        if said.get("state") == "running" and not killed:  # the first explainer to start the job dies mid-job
            killed.append(said["worker"])
            victim = by_name[said["worker"]]
            orphans = victim.children()
            os.kill(victim.proc.pid, signal.SIGKILL)
            for pid in orphans:  # its model's child process would finish the dead job by itself
                os.kill(pid, signal.SIGKILL)

    subscribed = threading.Event()
    watcher.on_message = on_reply
    watcher.on_connect = lambda c, *a: c.subscribe(f"factory-copilot/{SITE}/{LINE_NAME}/explain/reply/#", 1)
    watcher.on_subscribe = lambda *a: subscribed.set()
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    assert subscribed.wait(10)
    try:
        CALL_FOR.set(CallFor("A-7@1000.000", 4))
        started = time.monotonic()
        reply = backend.answer(ASK, long, timeout_s=60)
        took = time.monotonic() - started
        s = backend.stats()
        assert killed and s["republished"] == 1 and s["answered"] == 1 and s["duplicates"] == 0
        assert reply.stats["sends"] == 2.0 and reply.stats["completion_chunks"] > 1000  # the whole answer, redone
        survivor = b if killed[0] == "ex-a" else a
        assert survivor.stop()["done"] == 1
        assert by_name[killed[0]].proc.wait(10) == -signal.SIGKILL
        assert took < 30
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        backend.close()


def test_without_any_explainer_the_call_times_out_at_its_deadline_and_the_runbook_diagnosis_stands(broker):
    backend = pool(broker, lease_s=0.3, retries=2, deadline_s=1.5)
    try:
        started = time.monotonic()
        with pytest.raises(ModelTimeout, match="no explainer .* answered within 1.5 s"):
            backend.chat(ASK, max_tokens=8, timeout_s=10)
        assert 1.4 < time.monotonic() - started < 3.0
        s = backend.stats()
        assert (s["republished"], s["timeouts"], s["answered"]) == (2, 1, 0)  # sent 3 times, bounded
        # the station: the model's call fails by its deadline, the runbook diagnosis goes out with the reason
        cop = Copilot(load_line(SIMULATED_LINE), backend=backend, timeout_s=1.5)
        for r in ramp("product_pump.vibration", 2.0, 6.0):
            cop.observe(r)
        import asyncio

        d = asyncio.run(cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7)))
        assert d.origin == "runbook" and d.fallback_reason.startswith("timeout: no explainer")
        assert cop.counts["fallback"] == 1 and cop.stats()["model_file"]["backend"]["timeouts"] == 2
    finally:
        backend.close()


def test_a_result_given_twice_reaches_the_caller_once_and_the_second_is_counted(broker):
    explainer = HandMadeExplainer(broker, answer_twice=True)
    backend = pool(broker, deadline_s=10)
    try:
        CALL_FOR.set(CallFor("A-1@5.000"))
        assert backend.chat(ASK, timeout_s=10).text == "answer to A-1@5.000 #1"
        until(lambda: backend.stats()["duplicates"] == 1)
        # the same caller key again (a two-step answer's second call): a job of its own
        assert backend.chat(ASK, timeout_s=10).text == "answer to A-1@5.000~2 #1"
        until(lambda: backend.stats()["duplicates"] == 2)
        assert backend.stats()["answered"] == 2 and explainer.received == ["A-1@5.000", "A-1@5.000~2"]
    finally:
        backend.close()
        explainer.close()


def test_past_max_pending_the_most_urgent_job_goes_first_and_the_least_urgent_newest_expires(broker):
    explainer = HandMadeExplainer(broker, hold=True)
    backend = pool(broker, max_pending=1, deadline_s=20, lease_s=15)
    outcomes: dict[str, object] = {}

    def call(key: str, priority: int, timeout_s: float = 20) -> threading.Thread:
        def run():
            CALL_FOR.set(CallFor(key, priority))
            try:
                outcomes[key] = backend.chat(ASK, timeout_s=timeout_s).text
            except ModelTimeout as exc:
                outcomes[key] = exc

        t = threading.Thread(target=run)
        t.start()
        return t

    try:
        threads = [call("low-1", 1)]
        first = explainer.jobs.get(timeout=10)  # out, held by the explainer
        threads.append(call("low-2", 1))
        until(lambda: backend.stats()["waiting"] == 1)
        threads.append(call("question-3", 5))
        threads.append(call("low-4", 1, timeout_s=0.5))
        threads[-1].join(5)
        assert isinstance(outcomes["low-4"], ModelTimeout) and "never sent" in str(outcomes["low-4"])
        explainer.answer(first)
        explainer.answer(explainer.jobs.get(timeout=10))
        explainer.answer(explainer.jobs.get(timeout=10))
        for t in threads:
            t.join(10)
        assert explainer.received == ["low-1", "question-3", "low-2"]  # low-4 expired waiting, never sent
        assert outcomes["low-2"] == "answer to low-2 #1"
        assert backend.stats()["expired_waiting"] == 1
    finally:
        backend.close()
        explainer.close()


def test_the_line_file_sends_the_copilot_to_the_pool_and_names_its_mistakes(broker, tmp_path):
    import yaml

    raw = yaml.safe_load(SIMULATED_LINE.read_text())
    raw["mqtt"] = {"host": "127.0.0.1", "port": broker.port}
    raw.setdefault("service", {})["copilot"] = {"pool": {"lease_s": 5, "deadline_s": 30}}
    line = parse_line(raw, "plant.yaml")
    backend = backend_from_settings(line=line)
    assert isinstance(backend, PoolBackend) and backend.jobs_topic == f"factory-copilot/{line.site}/explain/jobs"
    assert backend.reply_topic.startswith(f"factory-copilot/{line.site}/{line.line}/explain/reply/")
    assert (backend.lease_s, backend.deadline_s, backend.supports_forms) == (5, 30, True)
    backend.close()

    def problems(copilot: dict, mqtt: bool = True) -> str:
        bad = {**raw, "service": {**raw["service"], "copilot": copilot}}
        if not mqtt:
            bad.pop("mqtt")
        with pytest.raises(LineConfigError) as err:
            parse_line(bad, "plant.yaml")
        return str(err.value)

    assert "service.copilot.pool: given with model_path" in problems({"pool": {}, "model_path": "m.gguf"})
    assert "service.copilot.pool.mqtt: no broker" in problems({"pool": {}}, mqtt=False)
    assert "lease_s: 30 s is not shorter than deadline_s" in problems({"pool": {"lease_s": 30, "deadline_s": 30}})
    assert "pool.lease_s: 200 s is not shorter" in problems({"pool": {"lease_s": 200}})
    assert "service.copilot.pool.mqtt.protocol: the explainer pool needs MQTT 5" in problems(
        {"pool": {"mqtt": {"protocol": "3.1.1"}}})


async def test_the_station_names_each_job_by_its_alarm_event_or_question_and_questions_go_first(broker):
    import asyncio

    from factory_copilot.plumbing.buffer import Buffer
    from factory_copilot.records import AlarmEvent, AlarmState, Question

    explainer = HandMadeExplainer(broker)
    backend = pool(broker, deadline_s=10)
    alarms, out, questions, answers = Buffer(10, "alarms"), Buffer(10, "diag"), Buffer(10, "q"), Buffer(100, "a")
    cop = Copilot(load_line(SIMULATED_LINE), backend=backend, alarms=alarms, diagnoses=out, questions=questions,
                  answers=answers, timeout_s=10)
    task = asyncio.create_task(cop.run())
    try:
        alarm = alarm_for("product_pump", "bearing_wear", 0.7)  # a high-priority alarm
        alarms.offer(AlarmEvent(alarm.alarm_id, 1000.0, "raised", AlarmState.ACTIVE_UNACK, alarm))
        assert (await asyncio.wait_for(out.get(), 10)).origin == "runbook"
        model = await asyncio.wait_for(out.get(), 10)
        assert model.fallback_reason.startswith("invalid output")  # the hand-made explainer's words are no diagnosis
        questions.offer(Question("q-7", alarm.alarm_id, "what first?", "ann"))
        while not (chunk := await asyncio.wait_for(answers.get(), 10)).done:
            pass
        assert (chunk.origin, chunk.full_text) == ("model", "answer to q-7 #1")
        assert explainer.priorities == {f"{alarm.alarm_id}@1000.000": 3, "q-7": 5}
    finally:
        task.cancel()
        backend.close()
        explainer.close()


def test_an_explainer_that_cannot_run_its_model_or_reach_its_broker_says_so_and_takes_no_job(tmp_path, capsys):
    from factory_copilot.cli import main

    assert main(["explainer", "--broker", "http://x", "--site", SITE, "--model", "m.gguf"]) == 2
    assert "--broker 'http://x': expected mqtt://HOST:PORT" in capsys.readouterr().err
    missing = tmp_path / "missing.gguf"
    assert main(["explainer", "--broker", "mqtt://127.0.0.1:1", "--site", SITE, "--model", str(missing)]) == 2
    assert f"the explainer's model: model unavailable: cannot load model {missing}: file not found" in (
        capsys.readouterr().err)


def test_a_job_asked_while_the_site_broker_is_away_longer_than_its_lease_is_done_once(broker):
    """bench/site.py --outages: a job made with the broker down ran out its lease meanwhile and was published again
    into paho's queue, so both copies reached the pool once the broker was back. The lease counts from the broker's
    acknowledgement, and only while the pool's connection is up."""
    backend = pool(broker, lease_s=0.5, retries=2, deadline_s=30)
    backend.warm("")  # connected to the site broker
    assert backend.session.connected
    answers: list[str] = []
    try:
        broker.stop()
        until(lambda: not backend.session.connected)

        def ask() -> None:
            CALL_FOR.set(CallFor("A-9@77.000", 3))  # the alarm event the job is named for (this thread's context)
            answers.append(backend.chat(ASK, timeout_s=30).text)

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(2.5)  # the broker stays away for five leases (the away time itself is what is tested)
        assert backend.stats()["republished"] == 0  # the job never reached the broker: it waits in paho's queue
        broker.start()
        # the explainer is on the shared subscription before the pool's back-off brings it back (1, 2, 4 s)
        explainer = HandMadeExplainer(broker)
        try:
            asking.join(20)
            assert answers == ["answer to A-9@77.000 #1"]
            time.sleep(1.0)  # two leases more: a second copy would have come by now
            assert explainer.received == ["A-9@77.000"]  # done exactly once
            s = backend.stats()
            assert (s["answered"], s["duplicates"], s["republished"]) == (1, 0, 0)
        finally:
            explainer.close()
    finally:
        backend.close()


def line_service(tmp_path, backend):
    """The line's service with the pool as its copilot's model, not run: only its /health is read."""
    from factory_copilot.config import ServicePaths
    from factory_copilot.detect.persist import TrainedDetector
    from factory_copilot.service import LineService

    line = load_line(SIMULATED_LINE)
    return LineService(line, TrainedDetector(line.fingerprint(), line.line, detector=None), ServicePaths(tmp_path),
                       backend=backend, health_port=None)


def pool_reasons(service) -> list[str]:
    return [r for r in service.health()[1] if r.startswith("explain pool:")]


def test_health_names_the_site_broker_while_the_pool_cannot_reach_it(broker, tmp_path):
    backend = pool(broker, lease_s=0.5)
    service = line_service(tmp_path, backend)
    try:
        backend.warm("")
        assert backend.session.connected and pool_reasons(service) == []
        broker.stop()
        until(lambda: pool_reasons(service))
        [reason] = pool_reasons(service)
        assert reason.startswith(f"explain pool: site broker 127.0.0.1:{broker.port} unreachable since 20")
        broker.start()
        until(lambda: backend.session.connected, 15)
        assert pool_reasons(service) == []
    finally:
        backend.close()
        service.engine.close()
        service.store.close()


def test_health_names_jobs_no_explainer_takes_and_clears_once_one_does(broker, tmp_path):
    backend = pool(broker, lease_s=0.3, retries=50, deadline_s=20)
    service = line_service(tmp_path, backend)
    answers: list[str] = []
    asking = threading.Thread(target=lambda: answers.append(backend.chat(ASK, timeout_s=20).text))
    explainer = None
    try:
        asking.start()
        until(lambda: pool_reasons(service))
        [reason] = pool_reasons(service)
        assert reason.startswith("explain pool: no explainer took a job for ") and f"1 waiting at {JOBS}" in reason
        explainer = HandMadeExplainer(broker)  # one comes: the job, published again, is taken
        asking.join(10)
        assert len(answers) == 1 and pool_reasons(service) == []
    finally:
        backend.close()
        if explainer is not None:
            explainer.close()
        service.engine.close()
        service.store.close()


def test_a_lease_running_when_the_site_broker_goes_away_waits_for_it_and_then_runs_out(broker):
    """A job the broker has (acknowledged, held by an explainer that says nothing): the broker away for longer than
    the lease publishes nothing again; once the pool is back, the rest of the lease runs and the job goes out again
    (its explainer's session went with the broker)."""
    explainer = HandMadeExplainer(broker, hold=True)
    backend = pool(broker, lease_s=1.0, retries=2, deadline_s=30)
    asking = threading.Thread(target=lambda: pytest.raises(Exception, backend.chat, ASK, timeout_s=30))
    try:
        asking.start()
        explainer.jobs.get(timeout=10)  # taken, and no word of it
        until(lambda: backend.stats()["out"] == 1 and backend.stats()["unacked"] == 0)
        broker.stop()
        until(lambda: not backend.session.connected)
        time.sleep(2.5)  # away for two and a half leases
        assert backend.stats()["republished"] == 0
        broker.start()
        until(lambda: backend.session.connected, 15)
        until(lambda: backend.stats()["republished"] == 1, 5)
    finally:
        backend.close()
        explainer.close()
        asking.join(10)
