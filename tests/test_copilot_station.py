"""The station loop: the runbook diagnosis goes out at once, the model's follows; tokens stream; other events are ignored."""

from __future__ import annotations

import asyncio
import json
import threading

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot, LLMBackend, Reply
from factory_copilot.records import AlarmEvent, AlarmState, DiagnosisChunk
from tests.support.copilot import alarm_for, ramp

LINE = load_line(SIMULATED_LINE)
SUMMARY = 'Bearing "wear" on the pump\nat 5.9 mm/s — check grease.'
REPLY = json.dumps({"summary": SUMMARY, "causes": ["bearing_wear:medium"], "steps": [1]})


class GatedBackend(LLMBackend):
    """A model that answers only when the test opens the gate, so the test sees what went out before it."""

    name = "gated"

    def __init__(self):
        self.gate = threading.Event()

    def chat(self, messages, schema=None, max_tokens=512, on_token=None, timeout_s=None):
        assert self.gate.wait(30)
        for i in range(0, len(REPLY), 10):
            on_token and on_token(REPLY[i:i + 10])
        return Reply(REPLY)


def test_every_backend_is_an_llm_backend_with_what_its_flags_promise():
    """The station calls the protocol's members and nothing else: each backend implements them (issue 21)."""
    from factory_copilot.copilot import LlamaCppBackend, LocalModel, OpenAIBackend

    for cls in (LlamaCppBackend, LocalModel, OpenAIBackend):
        assert LLMBackend in cls.__mro__ and cls.chat is not LLMBackend.chat, cls
        assert (cls.answer is not LLMBackend.answer) == cls.supports_forms, cls  # a form where it says so, only there
    assert LlamaCppBackend.warm is not LLMBackend.warm and LocalModel.warm is not LLMBackend.warm  # from disk
    assert LocalModel.close is not LLMBackend.close  # its child process


def test_every_backend_counts_for_health_and_the_station_uses_only_what_the_protocol_declares():
    """``stats`` is the protocol's, so the station asks every backend (no getattr); it calls nothing undeclared."""
    import ast
    import inspect

    from factory_copilot.copilot import LlamaCppBackend, LocalModel, OpenAIBackend, station
    from factory_copilot.copilot.pool import PoolBackend

    for cls in (LlamaCppBackend, LocalModel, OpenAIBackend, PoolBackend):
        assert cls.stats is not LLMBackend.stats, cls
    used = {node.attr for node in ast.walk(ast.parse(inspect.getsource(station)))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "backend" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    declared = set(vars(LLMBackend)) | set(LLMBackend.__annotations__)
    assert {"chat", "answer", "warm", "close", "stats", "name"} <= used and used <= declared, used - declared


async def next_item(buffer: Buffer, timeout: float = 20):
    return await asyncio.wait_for(buffer.get(), timeout)


async def test_runbook_first_then_model_with_streamed_tokens():
    backend = GatedBackend()
    alarms, readings, out, tokens = Buffer(100, "alarms"), Buffer(10_000, "readings"), Buffer(100, "diag"), Buffer(1000, "tok")
    cop = Copilot(LINE, backend=backend, alarms=alarms, diagnoses=out, readings=readings, chunks=tokens)
    for r in ramp("product_pump.vibration", 2.0, 6.0):
        readings.offer(r)
    task = asyncio.create_task(cop.run())
    try:
        while readings.qsize():  # the station drains the readings before the alarm arrives
            await asyncio.sleep(0)
        alarm = alarm_for("product_pump", "bearing_wear", 0.7)
        ack = AlarmEvent(alarm.alarm_id, 1.0, "acknowledged", AlarmState.ACTIVE_ACK, alarm, actor="op")
        alarms.offer(ack)  # not a reason to explain again
        alarms.offer(AlarmEvent(alarm.alarm_id, 1.0, "raised", AlarmState.ACTIVE_UNACK, alarm))
        first = await next_item(out)
        assert first.origin == "runbook" and first.fallback_reason is None and first.causes[0].fault_type == "bearing_wear"
        assert out.qsize() == 0 and tokens.qsize() == 0  # the model has not answered: the alarm did not wait for it
        backend.gate.set()
        second = await next_item(out)
        assert second.origin == "model" and second.alarm_id == alarm.alarm_id and second.model == "gated"
        pieces = []
        while tokens.qsize():
            pieces.append(tokens.get_nowait())
        assert pieces[-1] == DiagnosisChunk(alarm.alarm_id, "", True)
        # the operator reads the summary as it is written (escapes decoded), not the JSON around it
        assert "".join(p.text for p in pieces[:-1]) == SUMMARY.replace("\n", " ") and len(pieces) > 3
        assert cop.stats()["runbook"] == 1 and cop.stats()["model"] == 1
    finally:
        task.cancel()


async def test_the_operator_reads_a_servers_summary_as_the_diagnosis_shows_it():
    """One JSON-string reader (decoding.JsonStringReader) streams the summary: escapes, a surrogate pair and control
    characters come out as the diagnosis, parsed from the same JSON, says them."""
    summary = 'Seal \\ud83d\\ude00 leak\\bing\\f at\\u0001 the\x01 \\"DE\\" end,\\u00e9\ttoo\\u000a!'
    reply = '{"summary": "' + summary + '", "causes": ["bearing_wear:low"], "steps": []}'

    class Server(LLMBackend):
        name = "server"

        def chat(self, messages, schema=None, max_tokens=512, on_token=None, timeout_s=None, **_):
            for i in range(0, len(reply), 3):  # escapes cut anywhere
                on_token and on_token(reply[i:i + 3])
            return Reply(reply)

    cop = Copilot(LINE, backend=Server())
    streamed = []
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7), on_token=streamed.append)
    assert d.origin == "model" and d.summary == 'Seal \U0001f600 leaking at the "DE" end,\u00e9 too !'
    assert " ".join("".join(streamed).split()) == d.summary


async def test_without_a_model_only_the_runbook_diagnosis_goes_out():
    alarms, out = Buffer(10, "alarms"), Buffer(10, "diag")
    cop = Copilot(LINE, alarms=alarms, diagnoses=out)
    task = asyncio.create_task(cop.run())
    try:
        alarms.offer(alarm_for("air_compressor", "air_leak", 0.9))
        d = await next_item(out)
        assert d.origin == "runbook" and d.causes[0].fault_type == "air_leak"
        # a question without a model is answered from the runbooks
        turn = await cop.ask(d.alarm_id, "how do I find the leak?")
        assert turn.origin == "runbook" and turn.text.startswith("Runbook search (no model): ")
        assert "RB-AIR-001" in turn.text
    finally:
        task.cancel()
    assert out.qsize() == 0


class TwoStepBackend(LLMBackend):
    """A llama.cpp-like backend that continues a prefilled answer: records what it was asked for each step."""

    name = "two-step"
    supports_prefill = True

    def __init__(self):
        self.calls = []

    def chat(self, messages, schema=None, max_tokens=512, on_token=None, timeout_s=None, prefill="", stop=None,
             grammar=None):
        self.calls.append({"prefill": prefill, "stop": stop, "grammar": grammar, "schema": schema})
        text = 'Vibration up \\u00b1 2\\nat the DE bearing\\' if not grammar else 'bearing_wear:high","unknown:low"],"steps":[2,2]}'
        for i in range(0, len(text), 5):
            on_token and on_token(text[i:i + 5])
        return Reply(text)


async def test_two_steps_the_summary_freely_then_the_choices_under_a_grammar():
    backend = TwoStepBackend()
    cop = Copilot(LINE, backend=backend, two_steps=True)
    for r in ramp("product_pump.vibration", 2.0, 6.0):
        cop.observe(r)
    streamed = []
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7), on_token=streamed.append)
    first, second = backend.calls
    assert first["prefill"] == '{"summary":"' and first["stop"] == ['"'] and not first["grammar"] and not first["schema"]
    assert second["prefill"].startswith('{"summary":"Vibration up') and second["prefill"].endswith('","causes":["')
    assert "\\\\u00b1 2\\\\nat the DE bearing\\\\" not in second["prefill"]  # the cut escape at the end was removed
    grammar = second["grammar"]
    assert '"bearing_wear:high"' in grammar and '"unknown:low"' in grammar and "pump_cavitation:medium" in grammar
    assert 'step ::= "1" | "2" | "3" | "4"' in grammar
    assert d.origin == "model" and d.summary == "Vibration up ± 2 at the DE bearing"
    assert "".join(streamed) == "Vibration up ± 2 at the DE bearing"  # the operator read the same words
    assert [c.fault_type for c in d.causes] == ["bearing_wear", "unknown"] and d.dropped_citations == 0
    pack = cop.pack(d.alarm_id)
    assert [s.runbook_id for s in d.steps] == [pack.step_for("2").rpartition(".")[0]]  # said twice, shown once


# -- the model's queue: questions first, nothing repeated, every wait announced -----------------------------------


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class OneAtATime(LLMBackend):
    """A model the test lets answer one call at a time: between calls the test reads the queue and what went out."""

    name = "one-at-a-time"

    def __init__(self):
        self.calls: list[str] = []  # "diagnosis" or "answer", in the order the model got them
        self.started = threading.Semaphore(0)
        self.go = threading.Semaphore(0)

    def chat(self, messages, schema=None, max_tokens=512, on_token=None, timeout_s=None):
        if max_tokens == 1:
            return Reply("ok")  # the warm-up
        self.calls.append("answer" if schema is None else "diagnosis")
        self.started.release()
        assert self.go.acquire(timeout=30)
        text = "Check the suction strainer first." if schema is None else REPLY
        on_token and on_token(text)
        return Reply(text)

    async def next_call(self) -> str:
        assert await asyncio.to_thread(self.started.acquire, True, 30), "the model got no call"
        return self.calls[-1]


def drain(buffer: Buffer) -> list:
    out = []
    while buffer.qsize():
        out.append(buffer.get_nowait())
    return out


async def job_state(jobs: Buffer, job: str, key: str, state: str | None = None):
    """The newest ModelJob of one job (``key``: alarm id or request id), once one (in ``state``) has gone out."""
    seen = {}
    while True:
        item = await next_item(jobs)
        seen[(item.job, item.request_id if item.job == "answer" else item.alarm_id)] = item
        found = seen.get((job, key))
        if found is not None and (state is None or found.state == state) and not jobs.qsize():
            return found, seen


def raised(alarm, ts, event="raised"):
    return AlarmEvent(alarm.alarm_id, ts, event, AlarmState.ACTIVE_UNACK, alarm)


async def test_a_question_goes_ahead_of_waiting_diagnoses_and_every_wait_says_where_it_stands():
    """Issue 25: on a loaded box a question showed "thinking..." for 120 s with no queue position, its runbook answer
    came only after a reload, and a diagnosis reached the page 143 s after its alarm while its label said 32.4 s."""
    from factory_copilot.records import Question

    clock, backend = Clock(1000.0), OneAtATime()
    alarms, out, questions = Buffer(100, "alarms"), Buffer(100, "diag"), Buffer(10, "questions")
    answers, jobs = Buffer(1000, "answers"), Buffer(1000, "jobs")
    cop = Copilot(LINE, backend=backend, alarms=alarms, diagnoses=out, questions=questions, answers=answers,
                  jobs=jobs, clock=clock)
    task = asyncio.create_task(cop.run())
    try:
        a = alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="product_pump.fault")
        b = alarm_for("air_compressor", "air_leak", 0.9, alarm_id="air_compressor.fault")
        alarms.offer(raised(a, 1000.0))
        alarms.offer(raised(b, 1001.0))
        assert await backend.next_call() == "diagnosis"  # the pump's, first come
        assert [d.origin for d in [await next_item(out), await next_item(out)]] == ["runbook", "runbook"]
        running, states = await job_state(jobs, "diagnosis", a.alarm_id, "running")
        queued = states[("diagnosis", b.alarm_id)]
        assert running.since == 1000.0 and running.position == 0
        assert (queued.state, queued.position, queued.waiting, queued.since) == ("queued", 1, 1, 1001.0)

        questions.offer(Question("q1", a.alarm_id, "what do I check first?", "ann"))
        first = await next_item(answers)  # the runbook's answer, at once: the model is busy
        assert (first.done, first.origin, first.request_id) == (False, "runbook", "q1") and first.full_text
        asked, states = await job_state(jobs, "answer", "q1")
        assert (asked.state, asked.position, asked.alarm_id) == ("queued", 1, a.alarm_id)  # behind the running one only
        assert states[("diagnosis", b.alarm_id)].position == 2  # the question went ahead of the compressor's diagnosis

        clock.t = 1043.0
        backend.go.release()  # the pump's diagnosis is written ...
        assert await backend.next_call() == "answer"  # ... and the operator's question comes next, not the compressor
        model = await next_item(out)
        assert model.origin == "model" and model.alarm_id == a.alarm_id
        assert model.latency_s == 43.0  # from the alarm event, the wait in the queue included
        backend.go.release()
        while True:
            chunk = await next_item(answers)
            if chunk.done:
                break
        assert chunk.origin == "model" and chunk.full_text == "Check the suction strainer first."
        assert await backend.next_call() == "diagnosis"
        backend.go.release()
        assert (await next_item(out)).alarm_id == b.alarm_id
        done, _ = await job_state(jobs, "diagnosis", b.alarm_id, "done")
        assert backend.calls == ["diagnosis", "answer", "diagnosis"]
    finally:
        task.cancel()


async def test_a_folded_consequence_and_a_re_alarm_of_the_same_situation_queue_no_model_job():
    """Issue 25: a folded consequence re-alarmed every ~20 s and was diagnosed each time (6 model, 9 runbook
    diagnoses in 6 minutes) while an operator's question waited."""
    from factory_copilot.records import Alarm, Anomaly, Priority

    calls = []

    class Instant(LLMBackend):
        name = "instant"

        def chat(self, messages, schema=None, max_tokens=512, on_token=None, timeout_s=None):
            if max_tokens > 1:  # not the warm-up
                calls.append(schema is not None)
            return Reply(REPLY)

    alarms, out = Buffer(100, "alarms"), Buffer(100, "diag")
    cop = Copilot(LINE, backend=Instant(), alarms=alarms, diagnoses=out)
    task = asyncio.create_task(cop.run())
    try:
        root = alarm_for("product_pump", "pump_cavitation", 0.8, alarm_id="product_pump.fault")
        flow = Anomaly(1000.0, "product_pump", "limit", 50.0, 60.0, signal="flow", value=50.0)
        folded = Alarm("product_pump.flow-limit", "product_pump", "flow:limit", AlarmState.ACTIVE_UNACK, Priority.HIGH,
                       "Product transfer pump: flow low", 1000.0, 1000.0, flow, suppressed=True,
                       parent_id=root.alarm_id)
        alarms.offer(raised(root, 1000.0))
        alarms.offer(raised(folded, 1001.0))
        for i in range(10):
            alarms.offer(raised(folded, 1020.0 + 20 * i, "realarm"))
        for i in range(3):
            alarms.offer(raised(root, 1100.0 + i, "realarm"))
        got = [await next_item(out) for _ in range(3)]
        assert sorted((d.alarm_id, d.origin) for d in got) == [
            ("product_pump.fault", "model"), ("product_pump.fault", "runbook"), ("product_pump.flow-limit", "runbook")]
        # the classifier changes its mind: a new fault name is a new diagnosis
        renamed = alarm_for("product_pump", "clogged_filter", 0.8, alarm_id="product_pump.fault")
        alarms.offer(raised(renamed, 1200.0, "reclassified"))
        got = [await next_item(out) for _ in range(2)]
        assert [(d.alarm_id, d.origin) for d in got] == [("product_pump.fault", "runbook"), ("product_pump.fault", "model")]
        while alarms.qsize():
            await asyncio.sleep(0)
    finally:
        task.cancel()
    assert calls == [True, True] and out.qsize() == 0
    assert cop.stats()["covered"] == 13  # 10 re-alarms of the folded one, 3 of its root
    assert cop.stats()["covered"] == 13  # 10 re-alarms of the folded one, 3 of its root


async def test_a_plcs_alarm_is_explained_like_its_own_from_the_signals_of_its_asset():
    """A PLC's alarm (OPC UA A&C, issue 23) carries no detector evidence: the copilot explains it from what its asset's
    signals did around it and the runbooks, every cited signal one it heard."""
    from factory_copilot.records import Alarm, Priority

    alarms, readings, out = Buffer(100, "alarms"), Buffer(10_000, "readings"), Buffer(100, "diag")
    cop = Copilot(LINE, backend=None, alarms=alarms, diagnoses=out, readings=readings)
    heard = ramp("product_pump.vibration", 2.0, 9.0) + ramp("filler.tank_level", 50.0, 50.5)
    for r in heard:
        readings.offer(r)
    task = asyncio.create_task(cop.run())
    try:
        while readings.qsize():
            await asyncio.sleep(0)
        alarm = Alarm("product_pump.plc_Pump1", "product_pump", "plc:ns=2;s=Pump1.HighVibration", AlarmState.ACTIVE_UNACK,
                      Priority.HIGH, "Pump1 vibration high", 1000.0, 1000.0)
        alarms.offer(AlarmEvent(alarm.alarm_id, 1000.0, "raised", AlarmState.ACTIVE_UNACK, alarm, actor="plc"))
        d = await next_item(out)
        assert d.alarm_id == alarm.alarm_id and d.asset == "product_pump" and d.origin == "runbook"
        assert d.causes and d.causes[0].fault_type in {"bearing_wear", "pump_cavitation", "pump_imbalance"}
        cited = {e.ref for c in d.causes for e in c.evidence if e.kind == "signal"}
        assert cited and cited <= {r.key for r in heard} and "product_pump.vibration" in cited
        assert "product_pump.vibration" in d.summary and d.steps and d.safety
    finally:
        task.cancel()
