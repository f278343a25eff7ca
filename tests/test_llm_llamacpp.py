"""The real llama-cpp-python path on a tiny random-weight Qwen2 GGUF: template, grammar, validation, fallbacks, streaming, queueing."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

pytest.importorskip("llama_cpp")

from factory_copilot.config import SIMULATED_LINE, load_line  # noqa: E402
from factory_copilot.copilot import Copilot, LlamaCppBackend  # noqa: E402
from factory_copilot.copilot.diagnosis import diagnosis_schema  # noqa: E402
from tests.support.copilot import TokenStream, alarm_for, make_tiny_qwen, ramp  # noqa: E402

LINE = load_line(SIMULATED_LINE)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    return make_tiny_qwen(tmp_path_factory.mktemp("models") / "tiny-qwen.gguf")


@pytest.fixture(scope="module")
def backend(tiny_qwen):
    return LlamaCppBackend(tiny_qwen, n_ctx=8192, n_threads=2, seed=7)


def small_schema(cop_faults, library, **kw):
    # a short summary and one item each: random weights fill every string to its bound, so bounds set the run time
    # (the copilot fills in each alarm's step numbers)
    return diagnosis_schema(faults=list(cop_faults), **{"summary_chars": 4, "max_causes": 1, **kw})


def copilot_with(backend, **kw) -> Copilot:
    cop = Copilot(LINE, backend=backend, **kw)
    if "schema" not in kw:
        cop.schema = small_schema(cop.faults, cop.library)
    for r in ramp("product_pump.vibration", 2.0, 6.0) + ramp("product_pump.bearing_temperature", 55, 80):
        cop.observe(r)
    return cop


def test_tiny_model_loads_fast_with_the_chat_template_from_the_file(tiny_qwen, backend):
    assert tiny_qwen.stat().st_size < 1_000_000
    started = time.perf_counter()
    llama = backend.load()
    assert time.perf_counter() - started < 2.0
    assert llama.chat_format == "chat_template.default"  # the template came from the GGUF, not a built-in guess
    assert "<|im_start|>" in llama.metadata["tokenizer.chat_template"]
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]
    reply = backend.chat(messages, max_tokens=1)
    rendered = "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    prompt_tokens = llama.tokenize(rendered.encode(), add_bos=False, special=True)
    assert prompt_tokens[0] == llama.tokenize(b"<|im_start|>", add_bos=False, special=True)[0]  # one control token
    assert reply.stats["context_tokens"] - len(prompt_tokens) in (0, 1)  # prompt (+ the generated token)


async def test_schema_constrained_output_is_parsed_and_citations_checked(backend):
    cop = copilot_with(backend)
    alarm = alarm_for("product_pump", "bearing_wear", 0.7)
    stream = TokenStream()
    d = await cop.diagnose(alarm, on_token=stream)
    assert d.origin == "model", d.fallback_reason
    raw = json.loads(cop.last_text, strict=False)  # what the model wrote, under the grammar
    assert list(raw) == ["summary", "causes", "steps"]  # the summary comes first: it streams to the operator
    pack = cop.pack(alarm.alarm_id)
    assert all(str(s) in pack.step_labels() for s in raw["steps"]) and d.dropped_citations == 0  # the grammar saw to it
    assert all(c.partition(":")[0] in list(cop.faults) + ["unknown"] for c in raw["causes"])
    if raw["steps"]:
        chosen = list(dict.fromkeys(pack.step_for(str(x)) for x in raw["steps"]))  # a step said twice counts once
        assert [s.runbook_id for s in d.steps] == [sid.rpartition(".")[0] for sid in chosen]
    for cause in d.causes:
        assert cause.origin == "model" and (cause.fault_type in cop.faults or cause.fault_type == "unknown")
        assert cause.title  # rendered from the catalogue, never written by the model
    assert all(s.text and s.runbook_id for s in d.steps)  # step text from the runbooks
    for book in {s.runbook_id.partition("#")[0] for s in d.steps}:  # each step's runbook brings its safety notes
        assert any(f"{book}#safety" in s for s in d.safety), book


async def test_a_step_not_offered_for_this_alarm_is_dropped_and_counted(backend):
    # only steps outside this alarm's pack are allowed by the grammar here, so every step must be dropped
    cop = copilot_with(backend)
    alarm = alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-missing")
    pack = cop.evidence(alarm)
    outside = [s for s in cop.library.step_ids() if s not in pack.step_ids][:5]
    cop.schema = diagnosis_schema(faults=["bearing_wear"], steps=outside, summary_chars=4, max_causes=1, max_steps=2)
    cop.schema["properties"]["steps"]["minItems"] = 1
    cop.fixed_schema = True
    d = await cop.diagnose(alarm)
    raw = json.loads(cop.last_text, strict=False)
    assert len(raw["steps"]) >= 1 and d.origin == "model"
    assert d.dropped_citations == len(raw["steps"])
    assert all(s.origin == "runbook" for s in d.steps)  # the runbook's own order stands in


async def test_timeout_falls_back_to_the_runbook(backend):
    cop = copilot_with(backend, timeout_s=0.2)
    # a 400-character summary: hundreds of tokens, far more than 0.2 s of generation
    cop.schema = diagnosis_schema(faults=list(cop.faults), summary_chars=400)
    cop.schema["properties"]["summary"]["minLength"] = 399  # the grammar forces them all
    cop.fixed_schema = True  # one call under this schema
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7))
    assert d.origin == "runbook" and d.fallback_reason.startswith("timeout")
    assert d.causes[0].fault_type == "bearing_wear" and d.latency_s < 10


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
async def test_broken_model_file_logs_once_and_falls_back(tiny_qwen, tmp_path, caplog, damage):
    path = tmp_path / "broken.gguf"
    if damage == "truncated":
        path.write_bytes(tiny_qwen.read_bytes()[:4096])
    elif damage == "garbage":
        path.write_bytes(b"this is not a gguf file\n" * 200)
    cop = copilot_with(LlamaCppBackend(path, n_threads=1))
    with caplog.at_level(logging.ERROR, logger="factory_copilot.copilot.backends"):
        first = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-1"))
        second = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-2"))
    for d in (first, second):
        assert d.origin == "runbook" and d.fallback_reason.startswith("model unavailable")
        assert d.causes[0].fault_type == "bearing_wear"
    lines = [r for r in caplog.records if "model unavailable" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0].getMessage()


async def test_tokens_stream_before_the_diagnosis_completes(backend):
    cop = copilot_with(backend)
    arrivals: list[float] = []
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        arrivals.append(time.perf_counter())
        pieces.append(piece)

    cop.schema = small_schema(cop.faults, cop.library, summary_chars=80)
    cop.schema["properties"]["summary"]["minLength"] = 60  # enough words to see them come one by one
    started = time.perf_counter()
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7), on_token=on_token)
    done = time.perf_counter()
    assert d.origin == "model" and d.latency_s is not None and len(pieces) >= 10
    # the pieces are the summary's words, in order, and nothing else of the JSON
    assert " ".join("".join(pieces).split()) == " ".join(d.summary.split())
    # the first piece came early, not in one lump at the end
    assert arrivals[0] - started < 0.6 * (done - started), (arrivals[0] - started, done - started)


async def test_concurrent_diagnoses_queue_on_one_model_and_both_complete(backend):
    cop = copilot_with(backend)
    order: list[str] = []
    calls_before = backend.calls
    a = alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-a")
    b = alarm_for("product_pump", "pump_cavitation", 0.6, alarm_id="A-b")
    da, db = await asyncio.wait_for(asyncio.gather(
        cop.diagnose(a, on_token=lambda p: order.append("a")),
        cop.diagnose(b, on_token=lambda p: order.append("b")),
    ), timeout=120)
    assert {da.alarm_id, db.alarm_id} == {"A-a", "A-b"} and da.summary and db.summary
    assert backend.calls - calls_before == 2
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert set(order) == {"a", "b"} and switches == 1  # one generation after the other, never interleaved


async def test_follow_up_questions_keep_a_conversation_per_alarm(backend):
    cop = copilot_with(backend)
    alarm = alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-q")
    cop.explain_now(alarm)
    first = await cop.ask("A-q", "what do I check first?", actor="op1", request_id="r1")
    second = await cop.ask("A-q", "and then?", actor="op1", request_id="r2")
    assert first.origin == second.origin == "model" and first.text and second.text
    turns = cop.conversation("A-q")
    assert [t.role for t in turns] == ["operator", "copilot", "operator", "copilot"]
    assert [t.request_id for t in turns] == ["r1", "r1", "r2", "r2"]
    with pytest.raises(KeyError, match="A-unknown"):
        await cop.ask("A-unknown", "hello?")


async def test_warm_up_caches_the_fixed_prefix_that_every_alarm_shares(tiny_qwen):
    backend = LlamaCppBackend(tiny_qwen, n_ctx=8192, n_threads=2)
    cop = copilot_with(backend)
    assert await cop.warm_up()
    llama = backend.load()
    prefix = llama.tokenize(f"<|im_start|>system\n{cop.system}<|im_end|>\n".encode(), add_bos=False, special=True)
    assert list(llama._input_ids[: len(prefix)]) == prefix  # in the KV cache before any alarm arrives
    # the alarm's prompt starts with exactly those tokens, so llama.cpp processes only the data block
    from factory_copilot.copilot.prompt import diagnosis_messages

    messages = diagnosis_messages(cop.system, cop.evidence(alarm_for("product_pump", "bearing_wear", 0.7)))
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert llama.tokenize(rendered.encode(), add_bos=False, special=True)[: len(prefix)] == prefix
    assert not await copilot_with(LlamaCppBackend(tiny_qwen.parent / "nope.gguf")).warm_up()


async def test_the_prompt_prefix_is_saved_to_disk_and_restored_after_a_restart(tiny_qwen, tmp_path, caplog):
    state = tmp_path / "copilot"
    first = LlamaCppBackend(tiny_qwen, n_ctx=8192, n_threads=2, state_dir=state)
    cop = copilot_with(first)
    assert await cop.warm_up() and cop.warm_stats["restored"] == 0.0
    saved = list(state.glob("prefix-tiny-qwen-*.kv"))
    assert len(saved) == 1 and saved[0].stat().st_size > 1000
    # a restart: a new process would load the model again and find the prefix on disk
    second = LlamaCppBackend(tiny_qwen, n_ctx=8192, n_threads=2, state_dir=state)
    cop2 = copilot_with(second)
    assert await cop2.warm_up() and cop2.warm_stats["restored"] == 1.0
    llama = second.load()
    prefix = llama.tokenize(f"<|im_start|>system\n{cop2.system}<|im_end|>\n".encode(), add_bos=False, special=True)
    assert list(llama._input_ids[: len(prefix)]) == prefix  # in the KV cache before any alarm
    d = await cop2.diagnose(alarm_for("product_pump", "bearing_wear", 0.7))
    assert d.origin == "model", d.fallback_reason
    assert cop2.last_timing["cached_tokens"] >= len(prefix)  # the alarm started from the restored prefix
    # another prompt (a changed line file) makes a new file and the stale one goes
    third = LlamaCppBackend(tiny_qwen, n_ctx=8192, n_threads=2, state_dir=state)
    stats = third.warm(cop2.system + " Changed.").stats
    assert stats["restored"] == 0.0 and list(state.glob("prefix-tiny-qwen-*.kv")) != saved
    assert len(list(state.glob("prefix-tiny-qwen-*.kv"))) == 1
    # a damaged file costs one warm-up, not the model
    only = next(state.glob("prefix-tiny-qwen-*.kv"))
    only.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"tokens\": [1]}garbage")
    fourth = LlamaCppBackend(tiny_qwen, n_ctx=8192, n_threads=2, state_dir=state)
    with caplog.at_level(logging.WARNING):
        assert fourth.warm(cop2.system + " Changed.").stats["restored"] == 0.0
    assert "not usable" in caplog.text
