"""The station loop: the runbook diagnosis goes out at once, the model's follows; tokens stream; other events are ignored."""

from __future__ import annotations

import asyncio
import json
import threading

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot
from factory_copilot.records import AlarmEvent, AlarmState, DiagnosisChunk
from tests.support.copilot import alarm_for, ramp

LINE = load_line(SIMULATED_LINE)
SUMMARY = 'Bearing "wear" on the pump\nat 5.9 mm/s — check grease.'
REPLY = json.dumps({"summary": SUMMARY, "causes": ["bearing_wear:medium"], "steps": [1]})


class GatedBackend:
    """A model that answers only when the test opens the gate, so the test sees what went out before it."""

    name = "gated"

    def __init__(self):
        self.gate = threading.Event()

    def chat(self, messages, schema=None, max_tokens=512, on_token=None, timeout_s=None):
        assert self.gate.wait(30)
        for i in range(0, len(REPLY), 10):
            on_token and on_token(REPLY[i:i + 10])
        return REPLY


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
        assert first.source == "runbook" and first.fallback_reason is None and first.causes[0].fault_type == "bearing_wear"
        assert out.qsize() == 0 and tokens.qsize() == 0  # the model has not answered: the alarm did not wait for it
        backend.gate.set()
        second = await next_item(out)
        assert second.source == "model" and second.alarm_id == alarm.alarm_id and second.model == "gated"
        pieces = []
        while tokens.qsize():
            pieces.append(tokens.get_nowait())
        assert pieces[-1] == DiagnosisChunk(alarm.alarm_id, "", True)
        # the operator reads the summary as it is written (escapes decoded), not the JSON around it
        assert "".join(p.text for p in pieces[:-1]) == SUMMARY.replace("\n", " ") and len(pieces) > 3
        assert cop.stats()["runbook"] == 1 and cop.stats()["model"] == 1
    finally:
        task.cancel()


async def test_without_a_model_only_the_runbook_diagnosis_goes_out():
    alarms, out = Buffer(10, "alarms"), Buffer(10, "diag")
    cop = Copilot(LINE, alarms=alarms, diagnoses=out)
    task = asyncio.create_task(cop.run())
    try:
        alarms.offer(alarm_for("air_compressor", "air_leak", 0.9))
        d = await next_item(out)
        assert d.source == "runbook" and d.causes[0].fault_type == "air_leak"
        # a question without a model is answered from the runbooks
        turn = await cop.ask(d.alarm_id, "how do I find the leak?")
        assert turn.source == "runbook" and turn.text.startswith("Runbook search (no model): ")
        assert "RB-AIR-001" in turn.text
    finally:
        task.cancel()
    assert out.qsize() == 0


class TwoStepBackend:
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
        return text


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
    assert d.source == "model" and d.summary == "Vibration up ± 2 at the DE bearing"
    assert "".join(streamed) == "Vibration up ± 2 at the DE bearing"  # the operator read the same words
    assert [c.fault_type for c in d.causes] == ["bearing_wear", "unknown"] and d.dropped_citations == 0
    pack = cop.pack(d.alarm_id)
    assert [s.runbook_id for s in d.steps] == [pack.step_for("2").rpartition(".")[0]]  # said twice, shown once


async def test_source_states_in_the_reading_stream_are_noted_not_trended():
    from factory_copilot.records import SourceState

    alarms, readings, out = Buffer(10, "alarms"), Buffer(100, "readings"), Buffer(10, "diag")
    cop = Copilot(LINE, alarms=alarms, diagnoses=out, readings=readings)
    readings.offer(SourceState("opcua", 990.0, False, "connection lost", ("product_pump.vibration",)))
    for r in ramp("product_pump.vibration", 2.0, 6.0)[-20:]:
        readings.offer(r)
    task = asyncio.create_task(cop.run())
    try:
        while readings.qsize():
            await asyncio.sleep(0)
        alarms.offer(alarm_for("product_pump"))
        d = await next_item(out)
        assert d.source == "runbook" and not task.done()  # the station kept running
        assert cop.sources["opcua"].connected is False and cop.history.last("product_pump.vibration")
    finally:
        task.cancel()
