"""The OpenAI-compatible backend against a small local server on 127.0.0.1 that speaks the chat-completions API with SSE."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot, OpenAIBackend
from factory_copilot.copilot.backends import BackendError, ModelTimeout, ModelUnavailable
from factory_copilot.copilot.language_model import AnswerForm
from factory_copilot.plumbing.broker import free_port
from tests.support.copilot import alarm_for, ramp

LINE = load_line(SIMULATED_LINE)

REPLY = json.dumps({
    "summary": "Pump bearing wear: vibration rising with bearing temperature.",
    "causes": ["bearing_wear:high"],
    "steps": [1, "RB-FILL-001#checks.1"],
})


class FakeLlamaServer:
    """Speaks POST /v1/chat/completions with "stream": true as server-sent events, one piece per event."""

    def __init__(self, reply: str = REPLY, status: int = 200, stall: threading.Event | None = None):
        self.reply, self.status, self.stall = reply, status, stall
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if outer.status != 200:
                    self.send_response(outer.status)
                    self.end_headers()
                    self.wfile.write(b'{"error": "model not loaded"}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    self.wfile.write(b": keep-alive\n\n")
                    for i in range(0, len(outer.reply), 7):
                        if outer.stall is not None and i >= 14:
                            outer.stall.wait(10)  # hold the stream open: the client must give up first
                        chunk = {"choices": [{"index": 0, "delta": {"content": outer.reply[i:i + 7]}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on the stream, as the timeout test wants

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.stall is not None:
            self.stall.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = FakeLlamaServer()
    yield s
    s.stop()


def copilot(backend) -> Copilot:
    cop = Copilot(LINE, backend=backend)
    for r in ramp("product_pump.vibration", 2.0, 6.0) + ramp("product_pump.bearing_temperature", 55, 80):
        cop.observe(r)
    return cop


def test_streams_pieces_and_sends_the_schema(server):
    backend = OpenAIBackend(server.url, model="qwen2.5-1.5b-instruct", api_key="k")
    pieces: list[str] = []
    reply = backend.chat([{"role": "user", "content": "hi"}], schema={"type": "object"}, max_tokens=50,
                         on_token=pieces.append)
    assert reply.text == REPLY and len(pieces) > 10 and "".join(pieces) == REPLY
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    assert req["body"]["stream"] is True and req["body"]["max_tokens"] == 50
    assert req["body"]["response_format"]["json_schema"]["schema"] == {"type": "object"}


async def test_model_diagnosis_over_http_is_validated(server):
    cop = copilot(OpenAIBackend(server.url))
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.8))
    assert d.origin == "model" and d.model.startswith("qwen2.5-1.5b-instruct@")
    assert d.dropped_citations == 1  # a filler step was not offered for this alarm
    refs = [e.ref for e in d.causes[0].evidence]
    assert refs[0] == "product_pump.vibration" and refs[-1] == "RB-PUMP-001#symptoms"
    assert d.causes[0].confidence == 0.8 and [s.runbook_id for s in d.steps] == ["RB-PUMP-001#checks"]
    # the schema went to the server as the grammar: fault ids of this line (and unknown) only
    schema = server.requests[0]["body"]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["causes"]["items"]["enum"][-3:] == ["unknown:high", "unknown:medium", "unknown:low"]
    assert schema["properties"]["steps"]["items"]["enum"] == [1, 2, 3, 4]
    sent = server.requests[0]["body"]["messages"]
    assert sent[0]["role"] == "system" and "PLANT_DATA" in sent[1]["content"]


async def test_the_backends_calls_are_counted_in_the_copilots_stats(server):
    cop = copilot(OpenAIBackend(server.url))
    assert cop.stats()["model_file"]["backend"] == {"calls": 0}
    await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.8))
    assert cop.stats()["model_file"]["backend"] == {"calls": 1}


async def test_unreachable_server_falls_back():
    cop = copilot(OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", connect_timeout_s=2))
    d = await cop.diagnose(alarm_for("product_pump", "bearing_wear", 0.8))
    assert d.origin == "runbook" and d.fallback_reason.startswith("model unavailable")
    with pytest.raises(ModelUnavailable):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}").chat([{"role": "user", "content": "x"}])


async def test_server_error_and_invalid_reply_fall_back():
    broken = FakeLlamaServer(status=503)
    chatty = FakeLlamaServer(reply="I am not JSON, sorry")
    try:
        d = await copilot(OpenAIBackend(broken.url)).diagnose(alarm_for("product_pump", "bearing_wear", 0.8))
        assert d.origin == "runbook" and "HTTP 503" in d.fallback_reason
        d = await copilot(OpenAIBackend(chatty.url)).diagnose(alarm_for("product_pump", "bearing_wear", 0.8))
        assert d.origin == "runbook" and d.fallback_reason.startswith("invalid output")
    finally:
        broken.stop()
        chatty.stop()


def test_a_stalled_stream_times_out():
    s = FakeLlamaServer(stall=threading.Event())
    try:
        got: list[str] = []
        with pytest.raises(ModelTimeout) as info:
            OpenAIBackend(s.url).chat([{"role": "user", "content": "x"}], on_token=got.append, timeout_s=0.5)
        assert info.value.partial == REPLY[:14] and "".join(got) == REPLY[:14]
    finally:
        s.stop()


async def test_a_server_is_warmed_with_one_token_and_refuses_what_it_cannot_do(server):
    backend = OpenAIBackend(server.url)
    cop = copilot(backend)
    assert await cop.warm_up()  # the protocol's default: one token, so the server caches the system prompt
    warm = server.requests[-1]["body"]
    assert warm["max_tokens"] == 1 and warm["messages"][0] == {"role": "system", "content": cop.system}
    assert not backend.supports_prefill and not backend.supports_forms and backend.model_path is None
    backend.chat([{"role": "user", "content": "x"}], stop=['"'])
    assert server.requests[-1]["body"]["stop"] == ['"']  # a server takes stop strings
    sent = len(server.requests)
    with pytest.raises(BackendError, match="no prefill"):
        backend.chat([{"role": "user", "content": "x"}], prefill='{"summary":"')
    with pytest.raises(BackendError, match="cannot answer in a form"):
        backend.answer([{"role": "user", "content": "x"}], AnswerForm())
    assert len(server.requests) == sent  # refused before anything went out
