"""The diagnosis answered in its form (decoding.py): summary written, ids chosen, JSON given; the prefix and its threads."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot
from factory_copilot.copilot.backends import spare_between, threads_for
from factory_copilot.copilot.decoding import AnswerForm, JsonStringReader
from factory_copilot.copilot.evidence import step_ref
from simulators.evaluation import simulated_incident
from factory_copilot.copilot.prompt import DATA_OPEN, STEP_CATALOGUE, diagnosis_messages, system_prompt
from factory_copilot.copilot.station import SUMMARY_TOKENS
from tests.support.copilot import TokenStream, alarm_for, make_tiny_qwen, ramp

LINE = load_line(SIMULATED_LINE)


def bearing_copilot(backend=None, **kw) -> Copilot:
    cop = Copilot(LINE, backend=backend, **kw)
    for r in ramp("product_pump.vibration", 2.0, 6.0) + ramp("product_pump.bearing_temperature", 55, 80):
        cop.observe(r)
    return cop


# ---------------------------------------------------------------- the model's string, read as it comes


def read_bytewise(raw: bytes) -> tuple[str, int | None]:
    reader, end = JsonStringReader(), None
    for i in range(len(raw)):
        _, at = reader.feed(raw[i:i + 1])
        if at is not None:
            end = i + at
            break
    return reader.text, end


def test_a_json_string_is_read_across_any_split_and_ends_at_its_quote():
    raw = 'Vib \\u00b1 2\\nat the \\"DE\\" bearing \\\\ caf\u00e9 \\ud83d!", "causes"'.encode()
    text, end = read_bytewise(raw)
    assert text == 'Vib \u00b1 2 at the "DE" bearing \\ caf\u00e9 !'  # escapes decoded, line break a space, lone surrogate gone
    assert raw[end - 1:end] == b'"' and raw[end:] == b', "causes"'
    whole = JsonStringReader()
    assert whole.feed(raw) == (text, end)  # in one piece or byte by byte: the same text, the same end


def test_a_surrogate_pair_is_one_character_and_control_characters_go_as_the_diagnosis_drops_them():
    text, end = read_bytewise(b'a\\ud83d\\ude00b \\ud83d\\nc\\bd\\fe\\u0001f\x02g"')
    assert text == "a\U0001f600b  cdefg" and end is not None  # half a pair, alone, is dropped; \\n is a space


def test_a_stray_escape_or_control_character_cannot_break_the_answer():
    text, end = read_bytewise(b'bad \\q escape\ttab \\u00zz and\x01 on"')
    assert end is not None and "\t" not in text and "\x01" not in text
    assert text.startswith("bad q escape tab ") and text.endswith(" on")
    json.loads(json.dumps(text))  # re-encoded by the decoder: always valid JSON


# ---------------------------------------------------------------- the form of the copilot's schema


def test_the_answer_form_follows_the_alarms_schema():
    cop = bearing_copilot()
    pack = cop.evidence(alarm_for("product_pump", "bearing_wear", 0.7))
    form = AnswerForm.from_schema(cop.schema_for(pack), SUMMARY_TOKENS)
    assert (form.text_key, form.min_chars, form.max_chars, form.max_tokens) == ("summary", 1, 120, SUMMARY_TOKENS)
    causes, steps = form.lists
    assert causes.key == "causes" and '"bearing_wear:high"' in causes.options and '"unknown:low"' in causes.options
    assert (causes.min_items, causes.max_items, causes.distinct_before) == (1, 2, ":")
    assert steps.key == "steps" and steps.options == ["1", "2", "3", "4"] and steps.max_items == 3
    assert AnswerForm.from_dict(json.loads(json.dumps(form.to_dict()))) == form  # crosses to the worker as JSON
    with pytest.raises(ValueError):
        AnswerForm.from_schema({"type": "object", "properties": {"causes": {"type": "array"}}}, 10)
    with pytest.raises(ValueError):
        AnswerForm.from_schema({"type": "object", "properties": {"s": {"type": "string"}, "n": {"type": "number"}}}, 10)


# ---------------------------------------------------------------- the answer on llama.cpp (tiny random-weight model)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return make_tiny_qwen(tmp_path_factory.mktemp("models") / "tiny-qwen.gguf")


@pytest.fixture(scope="module")
def backend(tiny_qwen):
    pytest.importorskip("llama_cpp")
    from factory_copilot.copilot import LlamaCppBackend

    return LlamaCppBackend(tiny_qwen, n_ctx=8192, n_threads=1, seed=7)


async def test_the_model_writes_the_summary_and_chooses_the_ids_the_json_is_given(backend):
    cop = bearing_copilot(backend)
    stream = TokenStream()
    alarm = alarm_for("product_pump", "bearing_wear", 0.7)
    d = await cop.diagnose(alarm, on_token=stream)
    assert d.origin == "model", d.fallback_reason
    pack = cop.pack(alarm.alarm_id)
    answer = json.loads(cop.last_text)
    jsonschema.validate(answer, cop.schema_for(pack))  # what a grammar would have allowed
    faults = [c.partition(":")[0] for c in answer["causes"]]
    assert len(set(faults)) == len(faults) and len(set(answer["steps"])) == len(answer["steps"])  # nothing said twice
    stats = cop.last_timing  # what the backend measured of the answer
    # every pass wrote or chose something; the JSON between (keys, quotes, brackets) never cost one
    assert stats["passes"] < stats["completion_chunks"]
    assert stats["context_tokens"] > stats["completion_chunks"] and d.dropped_citations == 0
    assert " ".join(stream.text.split()) == d.summary and d.summary  # the operator read what the diagnosis says


async def test_a_summary_stays_within_its_bounds_and_a_deadline_stops_the_answer(backend):
    cop = bearing_copilot(backend)
    cop.schema["properties"]["summary"].update(minLength=20, maxLength=20)
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-bounds"))
    assert d.origin == "model" and len(json.loads(cop.last_text)["summary"]) == 20
    # a deadline no answer can meet (a thread hop and one forward pass take longer): the tiny model answers a
    # 32-token summary in tens of milliseconds on a quiet machine, so a "long" answer is no sure way past 0.05 s
    slow = bearing_copilot(backend, timeout_s=1e-4)
    slow.schema["properties"]["summary"].update(minLength=2000, maxLength=2000)
    d = await slow.diagnose(alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-late"))
    assert d.origin == "runbook" and d.fallback_reason.startswith("timeout") and d.causes[0].fault_type == "bearing_wear"


async def test_the_warm_prefix_reaches_into_the_data_block(backend):
    cop = bearing_copilot(backend)
    assert await cop.warm_up()
    llama = backend.load()
    stem = backend.prompt_stem(cop.system, DATA_OPEN + "\n")
    assert stem.endswith(f"<|im_start|>user\n{DATA_OPEN}\n")
    stem_tokens = llama.tokenize(stem.encode(), add_bos=True, special=True)
    assert llama.input_ids[: llama.n_tokens].tolist() == stem_tokens
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-warm"))
    assert d.origin == "model" and cop.last_timing["cached_tokens"] == len(stem_tokens)  # only the alarm's own part was new


def test_the_child_process_answers_in_the_form_too(tiny_qwen):
    from factory_copilot.copilot.worker import LocalModel

    model = LocalModel(tiny_qwen, n_ctx=8192, n_threads=1, seed=7)
    try:
        cop = bearing_copilot(model)
        pieces: list[str] = []
        d = asyncio.run(cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7), on_token=pieces.append))
        assert d.origin == "model", d.fallback_reason
        assert cop.last_timing["passes"] < cop.last_timing["completion_chunks"]
        assert " ".join("".join(pieces).split()) == d.summary
    finally:
        model.close()


# ---------------------------------------------------------------- what the prompt carries, and where


def test_the_steps_text_is_in_the_cached_prefix_and_the_data_block_names_them():
    cop = bearing_copilot()
    assert STEP_CATALOGUE in cop.system
    catalogue = cop.system.split(STEP_CATALOGUE, 1)[1]
    seen_groups = 0
    for fault in ("bearing_wear", "air_leak", "belt_slip", "heater_degradation"):
        alarm, readings = simulated_incident(LINE, fault, at_s=600)
        for r in readings:
            cop.observe(r)
        pack = cop.evidence(alarm)
        user = diagnosis_messages(cop.system, pack)[1]["content"]
        offer = next(line for line in user.splitlines() if line.startswith("fits: "))
        named = []  # what the block's "fits: air_leak strong 1-3, bearing_wear weak 4" offers, read as the prompt says
        for part in offer.removeprefix("fits: ").split(", "):
            fault, *_, numbers = part.split(" ")
            if not numbers[0].isdigit():
                continue  # a fit without steps on offer
            first, _, last = numbers.partition("-")
            group = next(line for line in catalogue.splitlines() if line.startswith(f"{fault}: "))
            refs = [item.split(" ", 2)[:2] for item in group.removeprefix(f"{fault}: ").split("; ")]
            named += [(str(n), fault, " ".join(refs[i])) for i, n in enumerate(range(int(first), int(last or first) + 1))]
        # the numbers, runbooks and catalogue places the model reads are exactly the steps the alarm offers
        assert named == [(label, pack.step_faults[sid], step_ref(sid)) for label, sid in zip(pack.step_labels(), pack.step_ids)]
        assert f"{pack.asset} (" not in user and f"{pack.asset} ({pack.asset_name})" in cop.system  # its name: cached
        for sid in pack.step_ids:
            group = next(line for line in catalogue.splitlines() if line.startswith(f"{pack.step_faults[sid]}: "))
            assert f"{step_ref(sid)} {pack.step_texts[sid].replace('`', '')[:20]}" in group  # its text, cached
            assert pack.step_texts[sid].replace("`", "")[:20] not in user  # not per alarm
        seen_groups = max(seen_groups, len({fault for _, fault, _ in named}))
    assert seen_groups >= 2  # at least one alarm offered steps from two runbooks


def test_a_line_with_more_runbook_text_than_the_budget_keeps_the_steps_in_the_block(monkeypatch):
    import factory_copilot.copilot.prompt as prompt

    monkeypatch.setattr(prompt, "STEP_CATALOGUE_CHARS", 100)
    cop = bearing_copilot()
    assert STEP_CATALOGUE not in cop.system
    pack = cop.evidence(alarm_for("product_pump", "bearing_wear", 0.7))
    user = diagnosis_messages(cop.system, pack)[1]["content"]
    assert "\n1 Compare product_pump.vibration" in user and "1 check 1" not in user
    assert STEP_CATALOGUE in system_prompt(LINE.site, LINE.line, cop.faults, cop.library, steps=True)


# ---------------------------------------------------------------- prompt threads: the cores the machine leaves idle


def test_model_threads_take_only_the_cores_others_leave_idle():
    assert threads_for(None, 1, 2) == 1  # not measured: the generation's threads
    assert threads_for(1.8, 1, 2) == 2  # the service alone (~20 % of a core): both cores
    assert threads_for(1.5, 1, 2) == 1  # half of the other core busy: its thread would hold the first up
    assert threads_for(0.1, 1, 2) == 1 and threads_for(3.7, 3, 4) == 4 and threads_for(0.0, 3, 4) == 3
    # (time, all CPU seconds, idle CPU seconds, this process' CPU seconds) over one second of a 2-core machine
    assert spare_between((0.0, 100.0, 50.0, 1.0), (1.0, 102.0, 51.8, 1.0), 2) == pytest.approx(1.8)  # 90 % idle
    assert spare_between((0.0, 100.0, 50.0, 1.0), (1.0, 102.0, 50.8, 2.0), 2) == pytest.approx(1.8)  # we used one core
    assert spare_between((0.0, 100.0, 50.0, 1.0), (1.0, 102.0, 50.0, 1.0), 2) == pytest.approx(0.0)  # others use both
    assert spare_between((0.0, 100.0, 50.0, 1.0), (0.1, 100.2, 50.2, 1.0), 2) is None  # too short to tell


def test_the_backend_sizes_its_threads_from_the_machine(backend):
    import os

    cores = os.cpu_count() or 1
    fixed, batch = backend.fixed_threads, backend.n_threads_batch
    try:
        backend.fixed_threads = backend.n_threads_batch = None
        generation, prompt = backend.threads()
        assert backend.n_threads <= generation <= cores and backend.n_threads <= prompt <= cores
        spare = backend._spare.spare()
        assert spare is None or 0.0 <= spare <= cores
        backend.fixed_threads, backend.n_threads_batch = 1, None
        assert backend.threads()[0] == 1 and backend.batch_threads() >= 1  # configured: kept, whatever the machine
        backend.n_threads_batch = 1
        assert backend.threads() == (1, 1)
    finally:
        backend.fixed_threads, backend.n_threads_batch = fixed, batch


async def test_the_threads_are_asked_again_before_every_pass(backend, monkeypatch):
    asked: list[tuple[int, int]] = []

    def threads() -> tuple[int, int]:  # the machine's other work comes and goes: 1 thread, then 2, then 1...
        asked.append((2, 2) if len(asked) % 2 else (1, 1))
        return asked[-1]

    monkeypatch.setattr(backend, "threads", threads)
    cop = bearing_copilot(backend)
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.7, alarm_id="A-threads"))
    assert d.origin == "model", d.fallback_reason
    stats = cop.last_timing
    assert len(asked) == stats["passes"] > 2  # once per forward pass, the prompt's included
    assert stats["threads_batch"] == 1.0  # the prompt ran on what was asked first
    later = [g for g, _ in asked[1:]]
    assert stats["threads"] == pytest.approx(sum(later) / len(later)) and 1.0 < stats["threads"] < 2.0
    import llama_cpp

    ctx = backend.load()._ctx.ctx  # and llama.cpp was told: it holds what was asked last
    assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == asked[-1]


def test_a_free_answer_cannot_end_its_turn_before_it_says_something():
    import numpy as np

    from factory_copilot.copilot.decoding import says_something

    end = np.array([False, False, True, False, True])  # tokens 2 and 4 end a turn
    keep = says_something(end, min_tokens=2)
    prompt = [7] * 10
    for generated in range(4):
        scores = keep(prompt + [0] * generated, np.array([0.0, 1.0, 9.0, 2.0, 8.0]))
        best = int(np.argmax(scores))
        # the end of turn was the likeliest token: banned for the first two tokens of the answer, allowed after
        assert best == (3 if generated < 2 else 2), generated
