"""The local model in its own process: real llama.cpp in a child, crashes and hangs reported, the service never harmed."""

from __future__ import annotations

import json
import os
import signal

import pytest

pytest.importorskip("llama_cpp")

from factory_copilot.config import SIMULATED_LINE, load_line  # noqa: E402
from factory_copilot.copilot import Copilot, LocalModel, ModelTimeout, ModelUnavailable  # noqa: E402
from factory_copilot.copilot.choice import backend_from_settings  # noqa: E402
from factory_copilot.copilot.diagnosis import diagnosis_schema  # noqa: E402
from tests.support.copilot import alarm_for, make_tiny_qwen, ramp  # noqa: E402

LINE = load_line(SIMULATED_LINE)
HELLO = [{"role": "system", "content": "You explain alarms."}, {"role": "user", "content": "hello"}]
# the grammar forces a long answer, so a worker killed at its first token is surely still writing
LONG = {"type": "object", "properties": {"a": {"type": "string", "minLength": 300, "maxLength": 301}}, "required": ["a"]}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("worker-models")


@pytest.fixture(scope="module")
def tiny_qwen(models_dir):
    return make_tiny_qwen(models_dir / "tiny-qwen.gguf")


@pytest.fixture(scope="module")
def tiny_q4_k_m(models_dir):
    return make_tiny_qwen(models_dir / "tiny-qwen-q4_k_m.gguf", q4_k_m=True)


@pytest.fixture
def model(tiny_qwen):
    m = LocalModel(tiny_qwen, n_ctx=4096, n_threads=1, seed=3)
    yield m
    m.close()


def test_the_model_runs_in_a_child_and_streams_what_it_returns(model):
    pieces: list[str] = []
    reply = model.chat(HELLO, max_tokens=8, on_token=pieces.append)
    assert pieces and "".join(pieces) == reply.text
    assert model.pid is not None and model.pid != os.getpid()
    assert reply.stats["completion_chunks"] == len(pieces) and reply.stats["context_tokens"] > 0
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}, "required": ["a"]}
    assert set(json.loads(model.chat(HELLO, schema=schema, max_tokens=40).text)) == {"a"}  # grammar-constrained there too
    pid = model.pid
    model.close()
    assert model.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_k_quant_model_like_the_published_qwen_runs_a_batched_prompt(tiny_q4_k_m):
    """Q4_K_M weights and a long prompt take llama.cpp's batched matrix kernels, which a mis-built library cannot run."""
    m = LocalModel(tiny_q4_k_m, n_ctx=4096, n_threads=1)
    try:
        prompt = [{"role": "user", "content": "pump vibration rising while flow holds steady " * 40}]
        stats = m.chat(prompt, max_tokens=2).stats
    except ModelUnavailable as exc:
        pytest.fail(f"this machine's llama-cpp-python cannot run a Q4_K_M model: {exc}")
    finally:
        m.close()
    assert stats["context_tokens"] > 200 and m.crashes == 0


def kill_on_first_token(model: LocalModel, sig: signal.Signals):
    """A token sink that sends ``sig`` to the worker while it writes (as a crash in llama.cpp would end it)."""
    killed: list[int] = []

    def sink(_piece: str) -> None:
        if not killed and model.pid:
            killed.append(model.pid)
            os.kill(model.pid, sig)

    sink.killed = killed
    return sink


def test_a_crash_is_reported_by_its_signal_and_the_next_call_starts_a_new_worker(model, caplog):
    crash = kill_on_first_token(model, signal.SIGILL)
    with pytest.raises(ModelUnavailable, match="SIGILL") as err:
        model.chat(HELLO, LONG, max_tokens=400, on_token=crash)
    [first] = crash.killed
    assert "illegal instruction" in str(err.value) and "-mno-amx-tile" in str(err.value)
    assert any("SIGILL" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert model.chat(HELLO, max_tokens=2).text  # a new worker
    assert model.pid != first and model.crashes == 1


def test_after_max_crashes_the_model_is_given_up_for_good(tiny_qwen):
    m = LocalModel(tiny_qwen, n_threads=1, max_crashes=2)
    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            m.chat(HELLO, LONG, max_tokens=400, on_token=kill_on_first_token(m, signal.SIGKILL))
    with pytest.raises(ModelUnavailable, match="out of memory.*gave up after 2 crashes"):
        m.chat(HELLO, max_tokens=2)
    assert m.pid is None


async def test_a_copilot_on_a_dead_model_still_diagnoses_every_alarm(tiny_qwen):
    m = LocalModel(tiny_qwen, n_threads=1, max_crashes=1)
    cop = Copilot(LINE, backend=m, timeout_s=30)
    cop.schema = diagnosis_schema(faults=list(cop.faults), steps=cop.library.step_ids(), summary_chars=4,
                                  max_causes=1, max_steps=1)
    for r in ramp("product_pump.vibration", 2.0, 6.0):
        cop.observe(r)
    assert await cop.warm_up()
    os.kill(m.pid, signal.SIGSEGV)  # llama.cpp dies between two alarms
    for alarm_id in ("A-1", "A-2"):
        d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.8, {"product_pump.vibration": 0.9},
                                         alarm_id=alarm_id))
        assert d.origin == "runbook" and d.causes and d.steps
        assert "SIGSEGV" in d.fallback_reason and "gave up after 1 crash" in d.fallback_reason
    assert cop.stats()["fallback"] == 2


def test_a_worker_that_stops_answering_is_killed_at_its_deadline_and_replaced(model):
    model.chat(HELLO, max_tokens=1)
    stuck = model.pid
    os.kill(stuck, signal.SIGSTOP)  # as if prompt processing hung
    with pytest.raises(ModelTimeout, match="no answer within 0.5 s"):
        model.chat(HELLO, max_tokens=4, timeout_s=0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)
    assert model.chat(HELLO, max_tokens=2).text and model.pid != stuck
    assert model.crashes == 0  # a hang is a timeout, not a crash


def test_closing_stops_a_worker_mid_answer_without_counting_a_crash(model):
    pids: list[int] = []

    def shut_down(_piece: str) -> None:
        if not pids:
            pids.append(model.pid)
            model.close()  # as the service does at shutdown, while the model is still writing

    with pytest.raises(ModelUnavailable, match="shutting down"):
        model.chat(HELLO, LONG, max_tokens=400, on_token=shut_down)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert model.crashes == 0
    assert model.chat(HELLO, max_tokens=2).text and model.pid not in (None, pids[0])  # a later call starts afresh


def test_a_missing_or_broken_file_is_one_clear_error(models_dir, caplog):
    with pytest.raises(ModelUnavailable, match="file not found"):
        LocalModel(models_dir / "nope.gguf").chat(HELLO)
    broken = models_dir / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    m = LocalModel(broken, n_threads=1)
    with pytest.raises(ModelUnavailable, match="cannot load model"):
        m.chat(HELLO)
    with pytest.raises(ModelUnavailable, match="cannot load model"):
        m.chat(HELLO)  # said once, remembered
    assert m.crashes == 0 and m.pid is None
    assert sum("runbook explanations only" in r.getMessage() for r in caplog.records) == 2  # one line per model


def test_settings_choose_the_process_isolated_model(tiny_qwen):
    backend = backend_from_settings(str(tiny_qwen), n_threads=1)
    assert isinstance(backend, LocalModel) and backend is backend_from_settings(str(tiny_qwen), n_threads=1)


def test_the_worker_restores_the_prompt_prefix_a_former_worker_saved(tiny_qwen, tmp_path):
    system = Copilot(LINE).system
    first = LocalModel(tiny_qwen, n_ctx=4096, n_threads=1, state_dir=str(tmp_path))
    try:
        assert first.warm(system).stats["restored"] == 0.0
    finally:
        first.close()
    second = LocalModel(tiny_qwen, n_ctx=4096, n_threads=1, state_dir=str(tmp_path))  # the service restarted
    try:
        stats = second.warm(system).stats
        assert stats["restored"] == 1.0 and stats["prefix_tokens"] > 100
        assert second.chat(HELLO, max_tokens=2).text  # and it answers from there
    finally:
        second.close()
